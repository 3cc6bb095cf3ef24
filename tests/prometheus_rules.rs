//! The Prometheus alerting rules in deploy/prometheus/ are valid (`promtool check rules`) and pass
//! their unit tests (`promtool test rules`). Needs `promtool`: run scripts/install-prometheus.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// Runs `promtool <args>` in deploy/prometheus and asserts it succeeded.
fn promtool(args: &[&str]) {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed (not on PATH): run scripts/install-prometheus.sh \
             (it installs Debian's prometheus package, which provides promtool)"
        ),
        Err(e) => panic!("running promtool {args:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid() {
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "alerts_test.yml"]);
}
