//! WebSocket conformance: the Autobahn|Testsuite fuzzing client (`wstest`) against the gateway's real
//! connection code, in its echo test mode (`session.echo`). Every case must end OK, NON-STRICT or
//! INFORMATIONAL, and so must the closing handshake.
//!
//! `scripts/install-autobahn.sh` installs `wstest` (the README's test command runs it). By default the
//! cases 1 to 10 run; `AUTOBAHN_CASES` (comma-separated, e.g. `*`) and `AUTOBAHN_REPORT_DIR` choose
//! others and keep the HTML report (`scripts/autobahn.sh` runs the full suite).

mod common;

use common::{token, Gateway};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_CASES: &str = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*";
const RUN_LIMIT: Duration = Duration::from_secs(900);

fn wstest() -> PathBuf {
    if let Ok(p) = std::env::var("WSTEST") {
        return p.into();
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").expect("HOME")).join(".cache"));
    let venv = std::env::var("AUTOBAHN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache.join("gateway/autobahn-venv"));
    let p = venv.join("bin/wstest");
    assert!(
        p.exists(),
        "wstest not found at {}: run scripts/install-autobahn.sh (the README's test command does)",
        p.display()
    );
    p
}

/// Whether the case id matches a wstest pattern such as `9.*` or `12.1.3`.
fn matches(pattern: &str, case: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => case.starts_with(prefix),
        None => pattern == case,
    }
}

#[test]
fn autobahn_fuzzing_client_passes() {
    let cases_env = std::env::var("AUTOBAHN_CASES").unwrap_or_else(|_| DEFAULT_CASES.into());
    let cases: Vec<&str> = cases_env.split(',').map(str::trim).collect();
    let outdir = std::env::var("AUTOBAHN_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn"));
    std::fs::create_dir_all(&outdir).expect("report dir");
    // Only what this run writes is replaced.
    let _ = std::fs::remove_dir_all(outdir.join("report"));
    let outdir = outdir.canonicalize().expect("report dir path");

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/autobahn/echo.toml");
    let gw = Gateway::start(&["--config", config.to_str().expect("utf-8 path")]);
    let spec = json!({
        "outdir": outdir.join("report"),
        "servers": [{
            "agent": "gateway",
            "url": gw.ws_url(&token("autobahn", &[], &[])),
        }],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    let spec_path = outdir.join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).expect("writing the spec");

    let log = std::fs::File::create(outdir.join("wstest.log")).expect("log file");
    let mut child = Command::new(wstest())
        .args(["-m", "fuzzingclient", "-s"])
        .arg(&spec_path)
        .current_dir(&outdir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting wstest");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for wstest") {
            break s;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wstest ran longer than {RUN_LIMIT:?}; see {}",
                outdir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "wstest failed ({status}); see {}/wstest.log",
        outdir.display()
    );

    let index_path = outdir.join("report/index.json");
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(&index_path).expect("wstest wrote report/index.json"),
    )
    .expect("index.json is JSON");
    let results = index["gateway"].as_object().expect("results for the agent");
    // Guards against a run that quietly tested nothing. (This wstest has no 8.x cases.)
    for pattern in cases.iter().filter(|p| **p != "8.*") {
        assert!(
            results.keys().any(|c| matches(pattern, c)),
            "no case ran for {pattern}"
        );
    }
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    let mut failed = Vec::new();
    for (case, r) in results {
        let behavior = r["behavior"].as_str().unwrap_or("?");
        let close = r["behaviorClose"].as_str().unwrap_or("?");
        *tally.entry(format!("{behavior}/{close}")).or_default() += 1;
        // Compression cases (12.x, 13.x) are UNIMPLEMENTED: the gateway offers no permessage-deflate.
        let compression = case.starts_with("12.") || case.starts_with("13.");
        let ok = |b: &str| {
            matches!(b, "OK" | "NON-STRICT" | "INFORMATIONAL")
                || (compression && b == "UNIMPLEMENTED")
        };
        if !(ok(behavior) && ok(close) && close != "NON-STRICT") {
            failed.push(format!("{case}: {behavior} / close {close}"));
        }
    }
    eprintln!(
        "autobahn: {} cases ({tally:?}); report in {}",
        results.len(),
        outdir.join("report/index.html").display()
    );
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
}
