//! The observability pack (`deploy/observability/`) against a real node:
//! the alert rules pass `promtool check rules` and their own `promtool test
//! rules` cases, and every metric the Grafana dashboard or an alert names is
//! exported by a running node in Redis Cluster mode (which exports every
//! metric, the per-shard ones included). `relay_broker_up` follows the
//! cluster: 1 while a primary answers, 0 once none does.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::nodes::RelayProcess;
use serde_json::Value;

fn pack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

/// The `relay_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("relay_") {
        let tail = &rest[start..];
        let end = tail
            .find(|character: char| !(character.is_ascii_lowercase() || character == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every sample name the node's `/metrics` can carry, from its `# TYPE`
/// lines: a counter `x` is sampled as `x_total`, a histogram as
/// `x_bucket`, `x_sum` and `x_count`.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(declaration) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = declaration.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(pack().join("prometheus"))
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run promtool ({error}): install Debian's prometheus (apt-get install prometheus), as .ci/run does")
        });
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_own_cases() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

/// Every runbook an alert points to has its heading in operations.md.
#[test]
fn every_alert_has_a_runbook_in_operations_md() {
    let alerts = std::fs::read_to_string(pack().join("prometheus/alerts.yml")).unwrap();
    let operations = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            operations.contains(&format!("#### {name}")),
            "docs/operations.md has no runbook heading for {name}"
        );
        assert!(
            alerts.contains(&format!("docs/operations.md#{}", name.to_lowercase())),
            "{name} does not point to its runbook"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported_by_a_running_node() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(pack().join("grafana/chat-relay.json")).unwrap()).unwrap();
    let mut named = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let names = metric_names(target["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "panel {} queries no relay metric", panel["title"]);
            named.extend(names);
        }
    }
    let alerts = std::fs::read_to_string(pack().join("prometheus/alerts.yml")).unwrap();
    named.extend(metric_names(
        &alerts
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    ));

    let mut cluster = tokio::task::spawn_blocking(TestCluster::start_primaries_only)
        .await
        .unwrap();
    let node = RelayProcess::spawn(
        &cluster.seed_url(),
        "observed",
        &[("RELAY_REDIS_CLUSTER", "true"), ("RELAY_MAX_CONNECTIONS", "1234")],
    );
    let metrics = common::http_get_text(&node.url("/metrics")).await.1;
    let exported = exported(&metrics);
    let missing: Vec<&String> = named.iter().filter(|name| !exported.contains(*name)).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}\n{metrics}");
    assert!(named.len() >= 20, "{named:?}");
    // Gauges of whole numbers, read as the text's number.
    let gauge = async |name: &str| common::metric_at(&node.url(""), name).await.to_string();
    assert_eq!(gauge("relay_connection_limit ").await, "1234");
    assert_eq!(gauge("relay_draining ").await, "0");
    assert_eq!(gauge("relay_broker_up ").await, "1");

    // No primary answers: the broker is down, and the metric says so.
    for port in cluster.ports.clone() {
        let _ = cluster.server(port).kill();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while gauge("relay_broker_up ").await != "0" {
        assert!(
            Instant::now() < deadline,
            "relay_broker_up stayed 1 with every primary dead"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
