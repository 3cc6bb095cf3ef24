//! The Debian package end to end: `cargo deb --no-build` of a release build, its metadata and contents,
//! `dpkg -i`, `systemd-analyze verify` of the installed unit, the `gateway` user, and the INSTALLED
//! binary run with the packaged config (loopback overrides only) under a fake `NOTIFY_SOCKET`:
//! it must send READY=1 once it listens and STOPPING=1 on SIGTERM, then exit cleanly.
//!
//! Needs root and dpkg (a throwaway CI box: the package is purged again by a Drop guard; the system
//! user stays, as Debian packages leave them). Without root the test says so and skips. cargo-deb is
//! installed by scripts/install-deb-tools.sh when missing. systemd need not be running (no systemctl).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PKG: &str = "gateway";
const UNIT: &str = "/usr/lib/systemd/system/gateway.service";
/// A guard against a hung process, not a timing assertion.
const GENEROUS: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// The target dir this test was built in (`<target>/<profile>/deps/deb_package-…`).
fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Purges the package (and stops the gateway if still running) however the test ends.
struct Installed {
    child: Option<Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("dpkg").args(["--purge", PKG]).status();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn recv_state(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notify datagram from the gateway");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn debian_package_installs_and_notifies_systemd() {
    if !is_root() || Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED deb_package: needs root and dpkg (installs the package system-wide)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = target_dir();

    // cargo-deb and systemd-analyze, once (idempotent).
    run(Command::new(root.join("scripts/install-deb-tools.sh")).current_dir(root));

    // The release binary, then the package from it, in an output dir of our own.
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "gateway"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target));
    let out_dir = target.join("deb-test");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    run(Command::new(env!("CARGO"))
        .args(["deb", "--no-build", "--output"])
        .arg(&out_dir)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "one .deb expected in {}: {debs:?}",
        out_dir.display()
    );
    let deb = &debs[0];

    // Metadata and contents.
    let info = stdout_of(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains("Package: gateway"), "{info}");
    assert!(
        info.contains("adduser"),
        "Depends must include adduser: {info}"
    );
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(
            info.contains(script),
            "{script} missing from control: {info}"
        );
    }
    let conffiles = stdout_of(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"),
    );
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/gateway/gateway.toml"),
        "{conffiles}"
    );
    let postinst = stdout_of(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("postinst"),
    );
    assert!(
        postinst.contains("adduser --system --group --no-create-home"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper"),
        "systemd fragments missing: {postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    let contents = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for path in [
        "./usr/bin/gateway",
        "./etc/gateway/gateway.toml",
        &format!(".{UNIT}"),
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} not in package:\n{contents}"
        );
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/gateway")),
        "{contents}"
    );

    // Install (the guard purges it again).
    let mut installed = Installed { child: None };
    run(Command::new("dpkg")
        .arg("-i")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));

    let unit = std::fs::read_to_string(UNIT).expect("unit installed");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/gateway serve --config /etc/gateway/gateway.toml",
        "EnvironmentFile=-/etc/gateway/gateway.env",
        "User=gateway",
        "LimitNOFILE=1048576",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "{line} missing from the unit"
        );
    }
    run(Command::new("systemd-analyze").args(["verify", UNIT]));

    let config = std::fs::read_to_string("/etc/gateway/gateway.toml").unwrap();
    assert!(
        config
            .lines()
            .any(|l| l.starts_with("listen = \"0.0.0.0:8080\"")),
        "{config}"
    );
    for key in ["jwt_secret", "api_key"] {
        assert!(
            !config.lines().any(|l| l.trim_start().starts_with(key)),
            "{key} must be left to the operator"
        );
    }

    let passwd = stdout_of(Command::new("getent").args(["passwd", "gateway"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    let gid: u32 = fields[3].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert!(
        fields[6].ends_with("nologin") || fields[6].ends_with("false"),
        "login shell: {passwd}"
    );
    stdout_of(Command::new("getent").args(["group", "gateway"]));

    // The installed binary as user gateway, with the packaged config, secrets from the environment
    // (as the EnvironmentFile would set them), loopback-only overrides, and our notify socket.
    let dir = std::env::temp_dir().join(format!("gateway-deb-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock_path = dir.0.join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    notify.set_read_timeout(Some(GENEROUS)).unwrap();

    let mut child = Command::new("/usr/bin/gateway")
        .args(["serve", "--config", "/etc/gateway/gateway.toml"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(
            "GATEWAY_AUTH__JWT_SECRET",
            "deb-test-secret-0123456789abcdef",
        )
        .env("GATEWAY_AUTH__API_KEY", "deb-test-api-key-0123456789abcdef")
        .env("NOTIFY_SOCKET", &sock_path)
        .current_dir("/")
        // As root, uid() also clears the supplementary groups.
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start /usr/bin/gateway");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id() as libc::pid_t;
    installed.child = Some(child);

    let ready = recv_state(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=ready ws=127.0.0.1:")),
        "{ready:?}"
    );
    // READY=1 comes after the ready line: it is already on stdout.
    let line = BufReader::new(stdout)
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("gateway ready "))
        .expect("ready line on stdout");
    assert!(line.starts_with("gateway ready ws=127.0.0.1:"), "{line}");
    assert!(line.contains(" admin=127.0.0.1:"), "{line}");

    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopping = recv_state(&notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = installed.child.as_mut().unwrap().wait().unwrap();
    installed.child = None;
    assert!(status.success(), "gateway exited with {status}");

    drop(installed);
    let gone = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PKG])
        .output()
        .unwrap();
    let state = String::from_utf8_lossy(&gone.stdout);
    assert!(
        !gone.status.success() || state == "not-installed",
        "still installed: {state}"
    );
    assert!(!Path::new("/usr/bin/gateway").exists());
    assert!(
        !Path::new("/etc/gateway/gateway.toml").exists(),
        "purge keeps the conffile"
    );
}
