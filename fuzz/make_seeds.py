#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into seeds/<target>/.

corpus/<target>/ holds what the fuzzer found interesting from them (minimized with `cargo fuzz
cmin`); scripts/fuzz.sh reads both, and tests/fuzz_corpora.rs replays both.
"""
import base64, hashlib, hmac, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- handshake_request ----
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
def upgrade(path="/ws?token=abc.def.ghi", method="GET", extra="", version="13", key=KEY, proto="HTTP/1.1"):
    return (f"{method} {path} {proto}\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n")
H = "handshake_request"
write(H, "valid", upgrade())
write(H, "bearer", upgrade(path="/ws", extra="Authorization: Bearer abc.def.ghi\r\n"))
write(H, "leftover", upgrade() + "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
write(H, "post", upgrade(method="POST"))
write(H, "wrong-path", upgrade(path="/other"))
write(H, "version-8", upgrade(version="8"))
write(H, "bad-key", upgrade(key="short"))
write(H, "http10", upgrade(proto="HTTP/1.0"))
write(H, "partial", upgrade()[:40])
write(H, "many-headers", upgrade(extra="".join(f"X-H{i}: v\r\n" for i in range(60))))
write(H, "encoded-token", upgrade(path="/ws?a=1&token=a%2Eb%20c+d&token=second"))
write(H, "conn-list", upgrade(extra="").replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"))
write(H, "garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")

# ---- client_frames ----
def frame(payload, opcode=1, fin=True, rsv=0, mask=b"\x37\xfa\x21\x3d", masked=True, length=None):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + body
C = "client_frames"
sub = json.dumps({"type": "subscribe", "id": 1, "channel": "room:1", "filter": {"kind": ["a", 2]}, "since": "room:0:000000000007"})
write(C, "subscribe", frame(sub))
write(C, "publish", frame(json.dumps({"type": "publish", "id": "x", "channel": "room:1", "event": "e", "data": {"n": [1, 2.5, None]}, "priority": 4})))
write(C, "unsubscribe-ping", frame('{"type":"unsubscribe","channel":"room:1"}') + frame('{"type":"ping","id":[1]}'))
write(C, "since-local", frame('{"type":"subscribe","channel":"c","since":"1f2e3d-000000000042"}'))
write(C, "not-json", frame("hello"))
write(C, "unknown-type", frame('{"type":"dance","id":7}'))
write(C, "huge-channel", frame(json.dumps({"type": "subscribe", "channel": "c" * 300})))
write(C, "fragmented", frame('{"type":"pi', fin=False) + frame(b"\x00", opcode=9) + frame('ng"}', opcode=0))
write(C, "ws-ping-pong-close", frame(b"abc", opcode=9) + frame(b"", opcode=10) + frame(struct.pack(">H", 1000) + b"bye", opcode=8))
write(C, "binary", frame(b"\x00\x01\x02", opcode=2))
write(C, "bad-utf8", frame(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))
write(C, "unmasked", frame('{"type":"ping"}', masked=False))
write(C, "rsv-bits", frame("x", rsv=3))
write(C, "reserved-opcode", frame("x", opcode=3))
write(C, "too-long", frame(b"x" * 10, length=1 << 40)[:20])
write(C, "close-bad-code", frame(struct.pack(">H", 999), opcode=8))

# ---- jwt ----
J = "jwt"
def b64(d):
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
def token(header, claims, secret=b"fuzz-secret"):
    h = b64(json.dumps(header).encode()); c = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret, f"{h}.{c}".encode(), hashlib.sha256).digest())
    return f"{h}.{c}.{sig}"
good = {"sub": "42", "exp": 4102444800, "channels": ["room:*"], "publish": ["chat:1"]}
write(J, "claims", json.dumps(good))
write(J, "claims-nbf", json.dumps({"sub": "a", "exp": 4102444800, "nbf": 4102444000}))
write(J, "claims-empty-sub", json.dumps({"sub": "", "exp": 4102444800}))
write(J, "claims-numeric-sub", json.dumps({"sub": 7, "exp": 4102444800}))
write(J, "claims-expired", json.dumps({"sub": "a", "exp": 1}))
write(J, "claims-huge-exp", json.dumps({"sub": "a", "exp": 18446744073709551615}))
write(J, "claims-bad-lists", json.dumps({"sub": "a", "exp": 4102444800, "channels": "room:*", "publish": [1]}))
write(J, "wrong-key", token({"alg": "HS256", "typ": "JWT"}, good, b"other"))
write(J, "alg-none", b64(b'{"alg":"none"}') + "." + b64(json.dumps(good).encode()) + ".")
write(J, "alg-rs256", token({"alg": "RS256"}, good))
write(J, "two-parts", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9")
write(J, "garbage", "not a token at all")

# ---- kafka_record ----
K = "kafka_record"
write(K, "keyed", b'room:1\x00{"score":10}\x00event:result\x00id:abc\x00priority:4')
write(K, "keyed-null", b"room:1")
write(K, "keyed-empty-value", b"room:1\x00")
write(K, "user", b'user:42\x00"hi"\x00user:7')
write(K, "envelope", b'\x00' + json.dumps({"channel": "broadcast", "event": "e", "id": "1", "priority": 2, "data": [1, {"a": None}]}).encode())
write(K, "envelope-no-channel", b'\x00{"data":1}')
write(K, "envelope-array", b"\x00[1,2]")
write(K, "no-key-no-value", b"")
write(K, "bad-json", b"room:1\x00{not json")
write(K, "bad-priority", b"room:1\x001\x00priority:9")
write(K, "bad-key-utf8", b"\xff\xfe\x001")
write(K, "bad-header-utf8", b"room:1\x001\x00event:\xff")
write(K, "long-key", b"k" * 300 + b"\x001")
write(K, "deep-json", b"room:1\x00" + b"[" * 200 + b"]" * 200)
