//! Loading, layering and validation of the configuration.
use super::*;

#[test]
fn flags_override_file_and_defaults() {
    let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "shards = 3\n[limits]\nmax_subscriptions = 7\nqueue_bytes = 8192\n",
    )
    .unwrap();
    let cfg = Config::load(Some(&file), serde_json::json!({"shards": 2})).unwrap();
    assert_eq!(cfg.shards, 2);
    assert_eq!(cfg.limits.max_subscriptions, 7);
    assert_eq!(cfg.limits.queue_bytes, 8192);
    assert_eq!(cfg.ws_path, "/ws");
}

#[test]
fn example_file_matches_the_defaults() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gateway.example.toml");
    let cfg = Config::load(Some(&file), serde_json::json!({})).unwrap();
    let defaults = Config::default();
    assert_eq!(
        serde_json::to_value(&cfg).unwrap(),
        serde_json::to_value(&defaults).unwrap()
    );
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let dir = std::env::temp_dir().join(format!("gw-cfg-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "shardz = 3\n").unwrap();
    assert!(Config::load(Some(&file), serde_json::json!({})).is_err());
    let err = Config::load(None, serde_json::json!({"ws_path": "ws"})).unwrap_err();
    assert!(format!("{err:#}").contains("ws_path"));
    let err = Config::load(
        None,
        serde_json::json!({"auth": {"jwt_algorithm": "RS256"}}),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("jwt_public_key_file"));
}
