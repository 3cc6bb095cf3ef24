//! permessage-deflate with a third-party client: Python `websockets` (installed by
//! scripts/install-pyws.sh, which the README's test command runs) runs tests/clients/deflate_client.py
//! against the gateway: a client that offers permessage-deflate (websockets' default offer) and one
//! that does not share a channel; the first publishes compressed requests and both must receive
//! the same messages, compressed (RSV1) only for the first.

mod common;

use common::{token, Gateway};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").expect("HOME")).join(".cache"));
    let venv = std::env::var("PYWS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache.join("gateway/pyws-venv"));
    let p = venv.join("bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/install-pyws.sh (the README's test command does)",
        p.display()
    );
    p
}

#[test]
fn python_websockets_negotiates_deflate_and_receives_what_a_plain_client_does() {
    let gw = Gateway::start(&[]);
    let tok = token("py", &["room_*"], &["room_*"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/deflate_client.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(gw.ws_url(&tok))
        .arg("room_py")
        .output()
        .expect("running the Python client");
    assert!(
        out.status.success(),
        "deflate_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("the client prints JSON");
    let agreed = r["agreed"].as_str().expect("permessage-deflate agreed");
    assert!(
        agreed.starts_with("permessage-deflate")
            && agreed.contains("server_no_context_takeover")
            && agreed.contains("client_no_context_takeover"),
        "{agreed}"
    );
    assert_eq!(r["plain_agreed"], Value::Null);
    assert_eq!(r["welcome"], "welcome");
    for who in ["packed", "plain"] {
        let got: Vec<&Value> = r[who]
            .as_array()
            .expect(who)
            .iter()
            .map(|m| &m["data"])
            .collect();
        assert_eq!(
            got,
            r["sent"].as_array().unwrap().iter().collect::<Vec<_>>(),
            "{who}"
        );
    }
    // Frames the compressing client decoded after subscribing: the two replies plain, the two
    // messages compressed (both are over session.deflate_min_bytes, 128, with their envelope).
    let rsv1: Vec<bool> = r["packed_rsv1"]
        .as_array()
        .expect("rsv1 list")
        .iter()
        .map(|b| b.as_bool().expect("bool"))
        .collect();
    assert_eq!(rsv1.len(), 4, "{rsv1:?}");
    assert_eq!(rsv1.iter().filter(|b| **b).count(), 2, "{rsv1:?}");
    // The gateway inflated the client's compressed publish requests.
    let m = gw.metrics();
    assert!(common::metric_sum(&m, "gateway_deflate_inflated_total") >= 2.0);
    assert_eq!(
        common::metric_sum(&m, "gateway_deflate_compressed_total"),
        2.0
    );
}
