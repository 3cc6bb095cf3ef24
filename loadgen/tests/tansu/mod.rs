//! Tansu for loadgen's Kafka tests: a broker on a free port with in-memory storage.

use std::process::Command;

/// A Tansu broker on a free port (installed by scripts/install-tansu.sh), killed on drop.
pub struct Broker(std::process::Child, pub String);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn broker() -> Broker {
    let bin = std::env::var("TANSU").ok().unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo_bin = format!("{home}/.cargo/bin/tansu");
        if std::path::Path::new(&cargo_bin).exists() {
            cargo_bin
        } else {
            "tansu".into()
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} ({e}): run scripts/install-tansu.sh"));
    // Owned at once, so the process is killed and reaped on every path.
    let broker = Broker(child, format!("127.0.0.1:{port}"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(&broker.1).is_ok() {
            return broker;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("tansu did not start on {}", broker.1);
}
