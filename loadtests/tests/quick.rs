//! Every scenario at its quick size against chat-relay, as CI runs it, so
//! the tooling never rots: the run must succeed, find chat-relay exact
//! (nothing lost, doubled or reordered, every subscriber of the storm
//! resumed) and write the JSON, the Markdown and both charts.

#![allow(clippy::disallowed_methods, reason = "a load generator owns its tasks itself")]

mod common;

use std::time::Duration;

use common::relay_load;

#[test]
fn every_quick_scenario_runs_against_chat_relay_and_finds_it_exact() {
    let out = std::env::temp_dir().join(format!("relay-load-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (status, _) = relay_load(
        &[
            "run",
            "--quick",
            "--systems",
            "relay",
            "--require-exact",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert!(status.success(), "relay-load exited {status}");

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let scenarios = results["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|scenario| scenario["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fan-out", "many rooms", "idle", "reconnect storm"]);
    for scenario in scenarios {
        let relay = &scenario["outcomes"][0];
        assert_eq!(relay["system"], "relay");
        let correctness = &relay["correctness"];
        for field in ["lost", "duplicated", "out_of_order", "unexpected"] {
            assert_eq!(correctness[field], 0, "{}: {field} in {correctness}", scenario["name"]);
        }
        assert_eq!(
            correctness["expected"], correctness["delivered"],
            "{}",
            scenario["name"]
        );
        if scenario["name"] == "idle" {
            assert!(relay["rss_per_connection_kib"].as_f64().unwrap() > 0.0, "{relay}");
        } else {
            assert!(correctness["expected"].as_u64().unwrap() > 0, "{relay}");
        }
        if scenario["name"] == "fan-out" {
            assert!(relay["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{relay}");
            assert!(
                relay["cpu_seconds_per_million_deliveries"].as_f64().unwrap() > 0.0,
                "{relay}"
            );
        }
        if scenario["name"] == "reconnect storm" {
            let resume = &relay["resume"];
            assert!(resume["disconnected"].as_u64().unwrap() > 0, "{relay}");
            assert_eq!(resume["disconnected"], resume["resumed"], "{relay}");
        }
    }
    let markdown = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(markdown.contains("| chat-relay |"), "{markdown}");
    for chart in ["latency-cdf.svg", "memory.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("chat-relay"), "{chart}");
    }
    assert!(
        std::fs::read_to_string(out.join("latency-cdf.svg"))
            .unwrap()
            .contains("<polyline")
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `relay-load presence` at a small size: it checks a watcher's final count
/// itself; here the figures must be those of a design whose cost follows
/// the changes (about one script call per change, at most one presence
/// frame per watcher per second).
#[test]
fn the_presence_benchmark_runs_and_its_cost_follows_the_changes() {
    let out = std::env::temp_dir().join(format!("relay-load-presence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (status, stdout) = relay_load(
        &[
            "presence",
            "--members",
            "60",
            "--churn",
            "20",
            "--seconds",
            "3",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "relay-load presence exited {status}: {stdout}");
    let row: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let figure = |name: &str| row[name].as_f64().unwrap_or_else(|| panic!("no {name} in {row}"));
    assert_eq!(row["changes"], 60, "{row}");
    assert!((0.9..1.5).contains(&figure("script_calls_per_change")), "{row}");
    assert!(figure("redis_commands_per_change") < 20.0, "{row}");
    assert!(figure("frames_per_watcher_per_second") <= 1.2, "{row}");
    assert!(figure("frames_per_watcher_per_second") > 0.3, "{row}");
    let _ = std::fs::remove_dir_all(&out);
}
