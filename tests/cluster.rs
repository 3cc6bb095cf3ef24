//! The short cluster scenario of `bench/cluster.py` (docs/scaling.md): separate hosts made of network
//! namespaces, a Tansu broker, two gateway nodes (this build's binary) behind HAProxy with health
//! checks, and 300 `loadgen --resume` clients; publishing goes through Kafka and one node is
//! SIGKILLed a third of the way in. It checks outcomes only, never timings: every client connected,
//! nothing lost, and every client of the killed node reconnected through the load balancer and
//! resumed with `since` (`recovered: true`).
//!
//! It needs root and `ip` (network namespaces); without them it prints why and passes, as the
//! harness cannot run there. It also needs haproxy (scripts/install-haproxy.sh), tansu
//! (scripts/install-tansu.sh), python3, and the loadgen binary beside the gateway's, which
//! `cargo test --workspace` builds (or name one in `LOADGEN`).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/cluster.py")
}

fn loadgen() -> PathBuf {
    if let Some(p) = std::env::var_os("LOADGEN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_BIN_EXE_gateway")).with_file_name("loadgen");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p loadgen` (cargo test --workspace does), or set LOADGEN",
        p.display()
    );
    p
}

#[test]
fn a_killed_node_loses_no_message() {
    let check = Command::new("python3")
        .arg(harness())
        .arg("--check")
        .output()
        .expect("python3 runs bench/cluster.py");
    if check.status.code() == Some(77) {
        println!(
            "skipping the cluster test: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        return;
    }
    assert!(
        check.status.success(),
        "bench/cluster.py --check: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let out = std::env::temp_dir().join(format!("gateway-cluster-{}", std::process::id()));
    let run = Command::new("python3")
        .arg(harness())
        .args(["--scenario", "short", "--json"])
        .arg("--gateway")
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .arg("--loadgen")
        .arg(loadgen())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3 runs bench/cluster.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the short cluster scenario failed (logs in {}):\n{}\n{}",
        out.display(),
        stdout,
        String::from_utf8_lossy(&run.stderr)
    );
    let results: Value = serde_json::from_str(&stdout).expect("the harness prints JSON");
    let r = &results[0];
    println!("{r}");
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {r}"))
    };
    assert_eq!(n("connected"), n("clients"), "every client connected");
    assert!(n("published") > 0);
    assert_eq!(n("publish_errors"), 0, "every publish acknowledged");
    assert_eq!(n("lost"), 0, "no message lost");
    assert!(n("deliveries") >= n("expected_deliveries"));

    // The killed node held clients, and each of them came back on the other node.
    let killed = r["events"][0]["connections"]
        .as_u64()
        .expect("the killed node's connections");
    assert!(killed > 0, "the killed node held no clients: {r}");
    assert!(n("reconnects") >= killed, "each of its clients resumed");
    assert!(n("recovered") >= killed, "each resumed with since");
    assert_eq!(n("unrecovered"), 0, "no resume found its pos gone");
    let _ = std::fs::remove_dir_all(&out);
}
