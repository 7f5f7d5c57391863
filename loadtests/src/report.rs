//! Results: one JSON document, a Markdown table per scenario with ratios
//! against chat-relay, and two SVG charts (latency CDF of the fan-out,
//! memory per idle connection).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::scenarios::Outcome;
use crate::systems::SystemKind;

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub size: &'static str,
    pub command: String,
    pub scenarios: Vec<ScenarioResults>,
}

#[derive(Debug, Serialize)]
pub struct ScenarioResults {
    pub name: &'static str,
    pub description: String,
    pub outcomes: Vec<Outcome>,
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|value| value.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {memory_gib} GiB, Linux, loopback")
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".to_owned(), |value| format!("{value:.digits$}"))
}

/// Node CPU per million deliveries, with its user and system parts.
pub fn cpu_cell(outcome: &Outcome) -> String {
    match (outcome.cpu_seconds_per_million_deliveries, outcome.us_per_delivery()) {
        (Some(total), Some((user, system))) => format!("{total:.2} ({user:.2} + {system:.2})"),
        (total, _) => cell(total, 2),
    }
}

/// Memory per idle connection, with the nodes' RSS over the run.
fn memory_cell(outcome: &Outcome) -> String {
    match (outcome.rss_per_connection_kib, outcome.rss_mib) {
        (Some(kib), Some(rss)) => format!("{kib:.2} ({:.0}, {:.0}, {:.0})", rss.before, rss.open, rss.closed),
        (kib, _) => cell(kib, 2),
    }
}

/// `relay / other` written as a ratio, with what is better said by the caller.
fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(numerator), Some(denominator)) if denominator > 0.0 => {
            let ratio = numerator / denominator;
            // Two significant digits, also for ratios far below 1.
            let decimals = if ratio >= 0.1 || ratio <= 0.0 {
                2
            } else {
                usize::try_from(1 - ratio.log10().floor() as i64).map_or(2, |decimals| decimals.min(6))
            };
            format!("{ratio:.decimals$}")
        }
        _ => "–".to_owned(),
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "# Load test results\n");
        let _ = writeln!(
            text,
            "- date: {}\n- machine: {}\n- size: {}\n- command: `{}`\n",
            self.date, self.machine, self.size, self.command
        );
        for scenario in &self.scenarios {
            let _ = writeln!(text, "## {}\n\n{}\n", scenario.name, scenario.description);
            let _ = writeln!(
                text,
                "| system | connections | published | deliveries | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | deliveries/s | node CPU s per 1M deliveries (user + system) | KiB per idle connection (node RSS MiB: before, open, closed) | resumed (all within s) | lost | duplicated | out of order |"
            );
            let _ = writeln!(text, "|{}", " --- |".repeat(16));
            for outcome in &scenario.outcomes {
                let latency = outcome.latency_ms;
                let resume = outcome.resume.map_or("–".to_owned(), |resume| {
                    format!(
                        "{}/{} ({:.2})",
                        resume.resumed, resume.disconnected, resume.all_resumed_s
                    )
                });
                if outcome.failure.is_some() {
                    let _ = writeln!(
                        text,
                        "| {} | did not complete (below) |{}",
                        outcome.system.label(),
                        " |".repeat(14)
                    );
                    continue;
                }
                let _ = writeln!(
                    text,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    outcome.system.label(),
                    outcome.connections,
                    outcome.published,
                    outcome.deliveries,
                    cell(latency.map(|l| l.p50), 2),
                    cell(latency.map(|l| l.p90), 2),
                    cell(latency.map(|l| l.p99), 2),
                    cell(latency.map(|l| l.p999), 2),
                    cell(latency.map(|l| l.max), 2),
                    if outcome.deliveries_per_second > 0.0 {
                        format!("{:.0}", outcome.deliveries_per_second)
                    } else {
                        "–".to_owned()
                    },
                    cpu_cell(outcome),
                    memory_cell(outcome),
                    resume,
                    outcome.correctness.lost,
                    outcome.correctness.duplicated,
                    outcome.correctness.out_of_order,
                );
            }
            for outcome in &scenario.outcomes {
                if let Some(failure) = &outcome.failure {
                    let _ = writeln!(text, "\n{} did not complete: {failure}", outcome.system.label());
                }
            }
            let relay = scenario
                .outcomes
                .iter()
                .find(|outcome| outcome.system == SystemKind::Relay && outcome.failure.is_none());
            let peers: Vec<&Outcome> = scenario
                .outcomes
                .iter()
                .filter(|outcome| outcome.system != SystemKind::Relay && outcome.failure.is_none())
                .collect();
            if let (Some(relay), false) = (relay, peers.is_empty()) {
                let _ = writeln!(text, "\nRatios (chat-relay against each peer, same run):\n");
                for peer in peers {
                    let mut parts = Vec::new();
                    let p99 = |outcome: &Outcome| outcome.latency_ms.map(|latency| latency.p99);
                    if relay.latency_ms.is_some() {
                        parts.push(format!(
                            "p99 latency {}x of {}'s",
                            ratio(p99(relay), p99(peer)),
                            peer.system.label()
                        ));
                    }
                    let per_cpu = |outcome: &Outcome| outcome.cpu_seconds_per_million_deliveries.map(|cpu| 1e6 / cpu);
                    if relay.cpu_seconds_per_million_deliveries.is_some() {
                        parts.push(format!(
                            "deliveries per CPU second {}x",
                            ratio(per_cpu(relay), per_cpu(peer))
                        ));
                    }
                    if relay.rss_per_connection_kib.is_some() {
                        parts.push(format!(
                            "memory per connection {}x",
                            ratio(relay.rss_per_connection_kib, peer.rss_per_connection_kib)
                        ));
                    }
                    if let (Some(ours), Some(theirs)) = (relay.resume, peer.resume) {
                        parts.push(format!(
                            "all resumed after {:.2} s against {:.2} s; lost {} against {}, duplicated {} against {}",
                            ours.all_resumed_s,
                            theirs.all_resumed_s,
                            relay.correctness.lost,
                            peer.correctness.lost,
                            relay.correctness.duplicated,
                            peer.correctness.duplicated
                        ));
                    }
                    let _ = writeln!(text, "- vs {}: {}", peer.system.label(), parts.join(", "));
                }
            }
            let _ = writeln!(text);
        }
        text
    }

    /// Writes `results.json`, `results.md` and the charts into `folder`.
    pub fn write(&self, folder: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(folder)?;
        std::fs::write(folder.join("results.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(folder.join("results.md"), self.markdown())?;
        if let Some(fanout) = self.scenarios.iter().find(|scenario| scenario.name == "fan-out") {
            std::fs::write(folder.join("latency-cdf.svg"), latency_cdf_svg(&fanout.outcomes))?;
        }
        if let Some(idle) = self.scenarios.iter().find(|scenario| scenario.name == "idle") {
            std::fs::write(folder.join("memory.svg"), memory_svg(&idle.outcomes))?;
        }
        Ok(())
    }
}

const COLORS: [&str; 5] = ["#1b6ac9", "#d9534f", "#5cb85c", "#7b4fc9", "#f0ad4e"];

fn color(system: SystemKind) -> &'static str {
    match system {
        SystemKind::Relay => COLORS[0],
        SystemKind::SocketIo => COLORS[1],
        SystemKind::Nchan => COLORS[2],
        SystemKind::RelayStomp => COLORS[3],
        SystemKind::RabbitMq => COLORS[4],
    }
}

/// The latency distribution: milliseconds (log scale) against percentile,
/// spaced by nines (0, 90, 99, 99.9, 99.99 %) so that the tail, where the
/// systems differ, gets as much room as the median.
pub fn latency_cdf_svg(outcomes: &[Outcome]) -> String {
    const NINES: f64 = 4.0;
    let (width, height, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 20.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max_ms = outcomes
        .iter()
        .flat_map(|outcome| outcome.latency_cdf.iter().map(|(ms, _)| *ms))
        .fold(1.0_f64, f64::max);
    let min_ms = outcomes
        .iter()
        .flat_map(|outcome| outcome.latency_cdf.iter().map(|(ms, _)| *ms))
        .fold(max_ms, f64::min)
        .max(0.01);
    let (low, high) = (min_ms.log10().floor(), (max_ms * 1.5).log10().ceil());
    let x = |ms: f64| left + (ms.max(10f64.powf(low)).log10() - low) / (high - low) * plot_w;
    let nines = |fraction: f64| (-(1.0 - fraction).max(1e-12).log10()).min(NINES);
    let y = |fraction: f64| top + (1.0 - nines(fraction) / NINES) * plot_h;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">Fan-out: publish-to-delivery latency by percentile</text>"#,
        width / 2.0
    );
    let mut decade = low;
    while decade <= high {
        let ms = 10f64.powf(decade);
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            x(ms),
            top + plot_h,
            top + plot_h + 18.0,
            if ms < 1.0 { format!("{ms}") } else { format!("{ms:.0}") }
        );
        decade += 1.0;
    }
    for (fraction, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#eee"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{label}</text>"##,
            y(fraction),
            left + plot_w,
            left - 6.0,
            y(fraction) + 4.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">milliseconds (log scale)</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">deliveries at or below</text>"#,
        left + plot_w / 2.0,
        height - 10.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (index, outcome) in outcomes.iter().enumerate() {
        let points: Vec<String> = outcome
            .latency_cdf
            .iter()
            .map(|(ms, fraction)| format!("{:.1},{:.1}", x(*ms), y(*fraction)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{}">{}</text>"#,
            color(outcome.system),
            points.join(" "),
            left + 10.0,
            top + 16.0 + 16.0 * index as f64,
            color(outcome.system),
            outcome.system.label()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Bars of KiB per idle connection.
pub fn memory_svg(outcomes: &[Outcome]) -> String {
    let (width, height, left, top, bar_h, gap) = (640.0, 80.0 + 50.0 * outcomes.len() as f64, 110.0, 50.0, 30.0, 20.0);
    let max = outcomes
        .iter()
        .filter_map(|outcome| outcome.rss_per_connection_kib)
        .fold(1.0_f64, f64::max);
    let plot_w = width - left - 90.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="15" text-anchor="middle">Server memory per idle WebSocket (KiB, RSS growth)</text>"#,
        width / 2.0
    );
    for (index, outcome) in outcomes.iter().enumerate() {
        let value = outcome.rss_per_connection_kib.unwrap_or(0.0);
        let row = top + index as f64 * (bar_h + gap);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text><rect x="{left}" y="{row:.1}" width="{:.1}" height="{bar_h}" fill="{}"/><text x="{:.1}" y="{:.1}">{value:.1}</text>"#,
            left - 8.0,
            row + bar_h / 2.0 + 4.0,
            outcome.system.label(),
            value / max * plot_w,
            color(outcome.system),
            left + value / max * plot_w + 6.0,
            row + bar_h / 2.0 + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::ratio;

    #[test]
    fn ratios_keep_two_significant_digits_however_small() {
        assert_eq!(ratio(Some(1.0), Some(2.0)), "0.50");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50");
        assert_eq!(ratio(Some(14.75), Some(5271.55)), "0.0028");
        assert_eq!(ratio(Some(0.0), Some(2.0)), "0.00");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "–");
        assert_eq!(ratio(None, Some(1.0)), "–");
    }
}
