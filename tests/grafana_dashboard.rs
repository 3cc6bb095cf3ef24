//! The Grafana dashboard (deploy/grafana/gateway.json) and the Prometheus alert rules
//! (deploy/prometheus/alerts.yml) only use metric names the real gateway exports: a renamed metric
//! fails here instead of leaving an empty panel or an alert that can never fire.

mod common;
mod kafka_common;

use kafka_common::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `gateway_…` identifier in `text` (not part of a longer identifier).
fn gateway_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "gateway_";
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = text[i..].find(PREFIX) {
        let start = i + off;
        let mut end = start + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let standalone = start == 0 || !ident(bytes[start - 1]);
        if standalone && end > start + PREFIX.len() {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Metric families of a /metrics exposition, from its `# TYPE <name> <type>` lines.
fn families(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Whether the series name `name` (as used in PromQL) exists in the exposition: a gauge (or
/// untyped) family's own name, a counter's `<family>_total`, a histogram's `_bucket`/`_sum`/`_count`.
fn exported(families: &HashMap<String, String>, name: &str) -> bool {
    let typed =
        |fam: &str, ty: &[&str]| families.get(fam).is_some_and(|t| ty.contains(&t.as_str()));
    if typed(name, &["gauge", "unknown", "untyped"]) {
        return true;
    }
    // OpenMetrics names the counter family without `_total`; the 0.0.4 text format may include it.
    if let Some(base) = name.strip_suffix("_total") {
        if typed(base, &["counter"]) || typed(name, &["counter"]) {
            return true;
        }
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| typed(base, &["histogram"]))
    })
}

/// The families the real binary exports. The Kafka families have members (and so appear in
/// /metrics) only once the gateway consumes partitions, so it runs against a Tansu broker
/// (scripts/install-tansu.sh) with the Kafka tests' standard layout.
fn exported_families() -> (HashMap<String, String>, String) {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    let gw = standard_gateway(&kafka, &broker.addr(), &[]);
    let mut text = String::new();
    wait_until(
        "the Kafka series in /metrics (gateway_kafka_up, gateway_kafka_lag)",
        KAFKA_READY,
        || {
            text = gw.metrics();
            text.contains("gateway_kafka_up{") && text.contains("gateway_kafka_lag{")
        },
    );
    let fams = families(&text);
    assert!(
        fams.contains_key("gateway_connections"),
        "the exposition has no gateway_connections family:\n{text}"
    );
    (fams, text)
}

fn assert_all_exported(
    what: &str,
    names: &BTreeSet<String>,
    fams: &HashMap<String, String>,
    text: &str,
    prose: bool,
) {
    // Prose (annotations, comments) may name a family itself, e.g. a histogram's; PromQL may not.
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !(exported(fams, n) || (prose && fams.contains_key(n.as_str()))))
        .collect();
    assert!(
        missing.is_empty(),
        "{what} uses metric names the gateway does not export: {missing:?}\n\
         (a counter is queried as <family>_total, a histogram as <family>_bucket/_sum/_count)\n\
         exported families: {fams:?}\n/metrics:\n{text}"
    );
}

/// Every string under an `expr` key, and the queries of template variables.
fn collect_queries(v: &Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                collect_queries(child, Some(k), out);
            }
        }
        Value::Array(a) => {
            for child in a {
                collect_queries(child, key, out);
            }
        }
        Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone());
        }
        _ => {}
    }
}

/// The PromQL of every `expr:` in a rules file: the rest of the line, or the indented block after
/// a `>-` / `|` block scalar.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('>') || rest.starts_with('|') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" ").trim().to_string());
        } else {
            out.push(rest.trim_matches(|c| c == '\'' || c == '"').to_string());
        }
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let (fams, text) = exported_families();

    // The dashboard.
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/gateway.json"))
        .expect("deploy/grafana/gateway.json is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "schemaVersion"
    );
    let mut queries = Vec::new();
    collect_queries(&dashboard, None, &mut queries);
    let exprs: Vec<&String> = queries.iter().filter(|q| q.contains("gateway_")).collect();
    assert!(
        exprs.len() >= 10,
        "the dashboard has too few gateway queries: {queries:?}"
    );
    let mut used = BTreeSet::new();
    for q in &queries {
        used.extend(gateway_names(q));
    }
    assert_all_exported("deploy/grafana/gateway.json", &used, &fams, &text, false);
    // The panels the issue asks for are there.
    for name in [
        "gateway_connections",
        "gateway_messages_delivered_total",
        "gateway_delivery_latency_seconds_bucket",
        "gateway_queue_bytes",
        "gateway_messages_dropped_low_priority_total",
        "gateway_slow_consumer_closes_total",
        "gateway_mesh_drops_total",
        "gateway_kafka_lag",
        "gateway_mesh_messages_total",
        "gateway_history_bytes",
    ] {
        assert!(
            used.contains(name),
            "no dashboard query uses {name}; it uses {used:?}"
        );
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.iter().any(|p| p["type"] == "heatmap"
            && p["targets"][0]["format"] == "heatmap"
            && p["targets"][0]["expr"]
                .as_str()
                .is_some_and(|e| e.contains("gateway_delivery_latency_seconds_bucket"))),
        "a heatmap panel of gateway_delivery_latency_seconds_bucket"
    );

    // The alert rules: every expression, then every name the file mentions (annotations too).
    let alerts = read("deploy/prometheus/alerts.yml");
    let exprs = rule_exprs(&alerts);
    assert!(
        exprs.len() >= 8,
        "alerts.yml has too few expr: lines: {exprs:?}"
    );
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = gateway_names(e);
        assert!(
            !names.is_empty() || e.contains("up{"),
            "alert expression uses no gateway metric: {e}"
        );
        used.extend(names);
    }
    assert_all_exported(
        "the expressions of deploy/prometheus/alerts.yml",
        &used,
        &fams,
        &text,
        false,
    );
    for name in [
        "gateway_kafka_lag",
        "gateway_kafka_up",
        "gateway_slow_consumer_closes_total",
        "gateway_auth_failures_total",
        "gateway_connections",
        "gateway_delivery_latency_seconds_bucket",
        "gateway_mesh_drops_total",
    ] {
        assert!(
            used.contains(name),
            "no alert expression uses {name}; they use {used:?}"
        );
    }
    assert_all_exported(
        "the text of deploy/prometheus/alerts.yml",
        &gateway_names(&alerts),
        &fams,
        &text,
        true,
    );
    // The unit tests' input series must be real series too, or they test nothing.
    let tests = read("deploy/prometheus/alerts_test.yml");
    let series: BTreeSet<String> = tests
        .lines()
        .filter(|l| l.trim_start().starts_with("- series:"))
        .flat_map(gateway_names)
        .collect();
    assert!(
        series.len() >= 7,
        "input series in alerts_test.yml: {series:?}"
    );
    assert_all_exported(
        "the input series of deploy/prometheus/alerts_test.yml",
        &series,
        &fams,
        &text,
        false,
    );
    assert_all_exported(
        "the text of deploy/prometheus/alerts_test.yml",
        &gateway_names(&tests),
        &fams,
        &text,
        true,
    );
}

#[test]
fn name_extraction() {
    let names = gateway_names(
        "sum by (le) (rate(gateway_delivery_latency_seconds_bucket{job=\"gateway\"}[5m])) \
         / my_gateway_x + gateway_kafka_lag>0 and gateway_*",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "gateway_delivery_latency_seconds_bucket",
            "gateway_kafka_lag"
        ]
    );
    let fams: HashMap<String, String> = [
        ("gateway_connections", "gauge"),
        ("gateway_messages_delivered", "counter"),
        ("gateway_delivery_latency_seconds", "histogram"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert!(exported(&fams, "gateway_connections"));
    assert!(exported(&fams, "gateway_messages_delivered_total"));
    assert!(!exported(&fams, "gateway_messages_delivered"));
    assert!(exported(&fams, "gateway_delivery_latency_seconds_bucket"));
    assert!(exported(&fams, "gateway_delivery_latency_seconds_count"));
    assert!(!exported(&fams, "gateway_delivery_latency_seconds"));
    assert!(!exported(&fams, "gateway_connections_total"));
    assert!(!exported(&fams, "gateway_connections_bucket"));
    let exprs = rule_exprs(
        "  - expr: up == 0\n    expr: >-\n      rate(a[5m])\n        > 1\n    for: 5m\n",
    );
    assert_eq!(exprs, ["up == 0", "rate(a[5m]) > 1"]);
}
