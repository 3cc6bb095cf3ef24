//! The JavaScript client (`clients/js`): runs its test suite (`npm test`: type check, tests against
//! a scripted server, against this build's gateway binary on the in-process bus and on a Tansu
//! broker, in headless Chromium, and of the `npm pack` package) with `GATEWAY_BIN` set to the
//! binary cargo built. Skipped, saying so, only when node is not installed; the dependencies come
//! from `scripts/install-js-deps.sh` and `scripts/install-chromium.sh` (both run by
//! `scripts/test.sh`).

use std::path::Path;
use std::process::Command;

#[test]
fn javascript_client_suite_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: node is not installed, so the JavaScript client's tests cannot run");
        return;
    }
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "clients/js has no node_modules: run scripts/install-js-deps.sh (npm ci) first"
    );
    let out = Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
        .output()
        .expect("running npm test in clients/js");
    assert!(
        out.status.success(),
        "npm test in clients/js failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
