"""A third-party client (Python `websockets`, RFC 7692 permessage-deflate on by default) against the
gateway, for tests/deflate_client.rs. Two clients join one channel, one offering permessage-deflate
(as websockets does by default) and one not; the compressing one publishes a large and a small
message (websockets compresses what it sends). Prints one JSON object: the negotiated extension,
and for each client the messages it received with the RSV1 bit of each frame.

Usage: deflate_client.py WS_URL_WITH_TOKEN CHANNEL
"""

import json
import sys

from websockets.extensions import permessage_deflate
from websockets.sync.client import connect

# RSV1 of every frame the compressing client decodes (its extension sees frames before inflating).
SEEN_RSV1 = []
_decode = permessage_deflate.PerMessageDeflate.decode


def _recording_decode(self, frame, *, max_size=None):
    if frame.opcode.name in ("TEXT", "BINARY", "CONT"):
        SEEN_RSV1.append(frame.rsv1)
    return _decode(self, frame, max_size=max_size)


permessage_deflate.PerMessageDeflate.decode = _recording_decode


# Channel messages that arrived while a reply was awaited, per connection.
EARLY = {}


def request(ws, req):
    ws.send(json.dumps(req))
    while True:
        frame = json.loads(ws.recv(timeout=5))
        if frame.get("type") == "reply" and frame.get("id") == req["id"]:
            return frame
        if frame.get("type") == "message":
            EARLY.setdefault(id(ws), []).append(frame)


def messages(ws, n):
    out = EARLY.pop(id(ws), [])
    while len(out) < n:
        m = json.loads(ws.recv(timeout=5))
        if m.get("type") == "message":
            out.append(m)
    return out


def main():
    url, channel = sys.argv[1], sys.argv[2]
    with connect(url) as packed, connect(url, compression=None) as plain:
        agreed = packed.response.headers.get("Sec-WebSocket-Extensions")
        plain_agreed = plain.response.headers.get("Sec-WebSocket-Extensions")
        welcome = json.loads(packed.recv(timeout=5))
        json.loads(plain.recv(timeout=5))
        for ws in (packed, plain):
            assert request(ws, {"type": "subscribe", "id": "s", "channel": channel})["ok"]
        big = {"rows": [{"id": i, "name": "row %d" % i, "ok": i % 2 == 0} for i in range(60)]}
        small = {"n": 1}
        del SEEN_RSV1[:]
        for data in (big, small):
            reply = request(
                packed, {"type": "publish", "id": "p", "channel": channel, "data": data}
            )
            assert reply["ok"], reply
        got_packed = messages(packed, 2)
        got_plain = messages(plain, 2)
        print(
            json.dumps(
                {
                    "agreed": agreed,
                    "plain_agreed": plain_agreed,
                    "welcome": welcome["type"],
                    "packed": got_packed,
                    "plain": got_plain,
                    "packed_rsv1": SEEN_RSV1,
                    "sent": [big, small],
                }
            )
        )


main()
