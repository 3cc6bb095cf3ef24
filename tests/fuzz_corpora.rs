//! Replays every committed fuzz input (the seeds in fuzz/seeds/<target>/ and what the fuzzer found
//! in fuzz/corpus/<target>/) through the same entry points the fuzz targets call, so whatever the
//! fuzzer once found stays fixed. scripts/fuzz.sh runs the fuzzers themselves.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        // A panic names the input it came from.
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} panicked on {}", target, path.display());
        n += 1;
    }
    assert!(
        n >= 10,
        "{target}: only {n} corpus inputs in {}",
        dir.display()
    );
}

#[test]
fn handshake_request_corpus() {
    replay("handshake_request", gateway::fuzz::handshake_request);
}

#[test]
fn client_frames_corpus() {
    replay("client_frames", gateway::fuzz::client_frames);
}

#[test]
fn jwt_corpus() {
    replay("jwt", gateway::fuzz::jwt);
}

#[test]
fn kafka_record_corpus() {
    replay("kafka_record", gateway::fuzz::kafka_record);
}
