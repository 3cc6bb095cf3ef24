//! `loadgen hold` against a real gateway (started in-process on port 0): every connection gets its
//! welcome, every subscribe its reply, one JSON line per phase; stdin drives the phases.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn gateway() -> gateway::server::Running {
    let overrides = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "shards": 2,
        "auth": {"jwt_secret": "hold-secret", "api_key": "hold-key"},
    });
    let cfg = gateway::config::Config::load(None, overrides).expect("config");
    gateway::server::start(cfg).expect("gateway starts")
}

fn hold(gw: &gateway::server::Running, args: &[&str]) -> std::process::Child {
    let url = format!("ws://{}/ws", gw.ws_addr);
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["hold", "--url", &url, "--secret", "hold-secret"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("loadgen runs")
}

fn next_line(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Value {
    let line = lines.next().expect("a line").expect("readable");
    serde_json::from_str(&line).expect("JSON line")
}

#[test]
fn phases_on_command() {
    let gw = gateway();
    let mut child = hold(
        &gw,
        &[
            "--conns",
            "120",
            "--rooms",
            "7",
            "--workers",
            "2",
            "--ramp",
            "1000",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
        ],
    );
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let connected = next_line(&mut lines);
    assert_eq!(connected["phase"], "connected");
    assert_eq!(connected["ok"], 120, "{connected}");
    assert_eq!(connected["latency"]["count"], 120);

    writeln!(stdin, "subscribe").expect("command");
    let subscribed = next_line(&mut lines);
    assert_eq!(subscribed["phase"], "subscribed");
    assert_eq!(subscribed["ok"], 120, "{subscribed}");
    assert_eq!(subscribed["failed"], serde_json::json!({}));

    writeln!(stdin, "stop").expect("command");
    let done = next_line(&mut lines);
    assert_eq!(done["phase"], "done");
    assert_eq!(done["closes_while_held"], serde_json::json!({}), "{done}");
    assert!(child.wait().expect("exits").success());
}

#[test]
fn auto_mode_and_a_refused_token() {
    let gw = gateway();
    let out = hold(&gw, &["--conns", "20", "--auto", "0.1"])
        .wait_with_output()
        .expect("loadgen runs");
    assert!(out.status.success());
    let phases: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(phases.len(), 3);
    assert_eq!(phases[1]["ok"], 20);

    let url = format!("ws://{}/ws", gw.ws_addr);
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["hold", "--url", &url, "--secret", "wrong", "--conns", "5"])
        .args(["--auto", "0"])
        .output()
        .expect("loadgen runs");
    assert_eq!(out.status.code(), Some(2));
    let first: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().expect("a line"))
            .expect("JSON line");
    assert_eq!(first["failed"]["http_401"], 5, "{first}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection was made"));
}
