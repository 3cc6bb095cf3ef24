//! The operator's configuration commands, run as the real binary: `gateway genconfig` writes a
//! configuration with fresh secrets that `gateway check-config` accepts and prints with the secrets
//! redacted; `check-config` refuses a broken file with its reason; `GATEWAY_LOG_FORMAT=json` makes
//! every log line a JSON object.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_remove("GATEWAY_LOG_FORMAT")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the gateway binary")
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A generated configuration has a random secret and key (different each time), is written
/// readable by its owner only, is never written over an existing file, and passes check-config,
/// which prints it without the secrets.
#[test]
fn genconfig_writes_fresh_secrets_that_check_config_accepts_and_redacts() {
    let a = gateway(&["genconfig"]);
    let b = gateway(&["genconfig"]);
    assert!(a.status.success(), "genconfig: {a:?}");
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    let secret_line = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("jwt_secret = "))
            .map(str::to_string)
            .expect("a jwt_secret line")
    };
    assert_ne!(
        secret_line(&a),
        secret_line(&b),
        "each run draws a new secret"
    );

    let dir = temp_dir("genconfig");
    let file = dir.join("gateway.toml");
    let f = file.to_str().expect("utf-8 path");
    let out = gateway(&["genconfig", "--out", f]);
    assert!(out.status.success(), "genconfig --out: {out:?}");
    let mode = std::fs::metadata(&file)
        .expect("written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "expected the file readable by its owner only");
    let again = gateway(&["genconfig", "--out", f]);
    assert!(
        !again.status.success(),
        "expected no overwrite of an existing file"
    );

    let text = std::fs::read_to_string(&file).expect("read back");
    let secret = secret_line(&text);
    let secret = secret.split('"').nth(1).expect("quoted secret");
    let checked = gateway(&["check-config", f]);
    assert!(checked.status.success(), "check-config: {checked:?}");
    let shown = String::from_utf8_lossy(&checked.stdout);
    assert!(
        shown.contains("[auth]") && shown.contains("listen = \"0.0.0.0:8080\""),
        "{shown}"
    );
    assert!(
        !shown.contains(secret),
        "expected the secret redacted: {shown}"
    );
    assert!(shown.contains("<redacted>"), "{shown}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A broken file is refused with the reason, and a public address without a secret is refused.
#[test]
fn check_config_names_what_is_wrong() {
    let dir = temp_dir("checkconfig");
    let cases = [
        ("shardz = 3\n", "shardz"),
        ("[limits]\nqueue_bytes = 10\n", "queue_bytes"),
        ("listen = \"0.0.0.0:8080\"\n", "auth.jwt_secret"),
    ];
    for (i, (body, reason)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad{i}.toml"));
        std::fs::write(&file, body).expect("write");
        let out = gateway(&["check-config", file.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body:?}: expected a refusal");
        assert!(
            err.contains(reason),
            "{body:?}: expected {reason:?} in: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// With `GATEWAY_LOG_FORMAT=json` every line the gateway logs is a JSON object with a level and
/// a message, up to and after the ready line.
#[test]
fn json_logs_for_log_shippers() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("GATEWAY_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let stdout = child.stdout.take().expect("stdout");
    let mut ready = String::new();
    BufReader::new(stdout)
        .read_line(&mut ready)
        .expect("ready line");
    assert!(ready.starts_with("gateway ready"), "{ready}");
    // SIGTERM: the drain logs more lines, then the process ends and stderr closes.
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("expected a JSON log line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        lines += 1;
        assert!(Instant::now() < deadline, "expected the gateway to stop");
    }
    let _ = child.wait();
    assert!(
        lines >= 3,
        "expected the start and drain to log; got {lines} lines"
    );
}
