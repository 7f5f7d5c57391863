//! The soak's checker. It trusts nothing the relay computes: the
//! authoritative history is each room's Redis stream as `XRANGE` returns it
//! (parsed here from the raw entry fields), and every client's log is what
//! it received on the wire, frame by frame. From those two it counts, per
//! fault window:
//!
//! - acked and missing: an `ack` whose id is not in the history (or holds
//!   another `cmid`);
//! - stored twice: one `cmid` in the history more than once;
//! - silent losses: history messages a subscriber never received although
//!   nothing (`gap`, `recovered: false`) told it;
//! - duplicates, reorderings (per subscriber; and per publisher, in the
//!   store), `prev` breaks (a message whose `prev` is not the id received
//!   before it, untold);
//! - surfaced losses (`gap`, `recovered: false`), each explained by a data
//!   loss of the store (a Redis restart without persistence) or not;
//! - phantoms: messages received that the history does not hold.
//!
//! A finding is filed under the latest fault whose window (its span plus
//! 5 s) holds it; one that a data loss explains, under that data loss.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

/// A Redis stream id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of a room's stream.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub id: StreamId,
    pub cmid: Option<String>,
}

/// A publish the relay acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub room: usize,
    pub cmid: String,
    pub id: StreamId,
    /// Seconds since the soak started.
    pub at: f64,
}

/// What a subscriber saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Subscribed {
        recovered: Option<bool>,
    },
    Message {
        id: StreamId,
        prev: StreamId,
    },
    Gap,
    Closed {
        code: Option<u16>,
    },
    /// What else the client saw (its node, `replay`): only for the examples.
    Note(String),
}

#[derive(Debug, Clone, Default)]
pub struct SubscriberLog {
    pub room: usize,
    pub events: Vec<(f64, Seen)>,
}

/// A span of the run that a fault explains.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub label: String,
    pub start: f64,
    pub end: f64,
}

/// What the checker found, in one window or in all.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub acked_missing: u64,
    /// Of those, with no data loss of the store after the ack.
    pub acked_missing_unexplained: u64,
    pub stored_twice: u64,
    pub silent_losses: u64,
    pub duplicates: u64,
    pub reorderings: u64,
    pub prev_breaks: u64,
    pub surfaced_losses: u64,
    /// Of those, with no data loss of the store to explain them.
    pub surfaced_unexplained: u64,
    pub phantoms: u64,
    pub phantoms_unexplained: u64,
}

impl Counts {
    /// With a persistent store: nothing but deliveries.
    pub fn is_clean(&self) -> bool {
        *self == Counts::default()
    }

    /// Without persistence: losses are real, but each one was told and
    /// each one has a data loss of the store behind it.
    pub fn every_loss_surfaced(&self) -> bool {
        self.acked_missing_unexplained == 0
            && self.stored_twice == 0
            && self.silent_losses == 0
            && self.duplicates == 0
            && self.reorderings == 0
            && self.prev_breaks == 0
            && self.surfaced_unexplained == 0
            && self.phantoms_unexplained == 0
    }
}

impl fmt::Display for Counts {
    /// The findings that are not zero, or "nothing".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = [
            ("acked-and-missing", self.acked_missing),
            ("of which unexplained", self.acked_missing_unexplained),
            ("stored twice", self.stored_twice),
            ("silent losses", self.silent_losses),
            ("duplicates", self.duplicates),
            ("reorderings", self.reorderings),
            ("prev breaks", self.prev_breaks),
            ("surfaced losses", self.surfaced_losses),
            ("of which unexplained", self.surfaced_unexplained),
            ("phantoms", self.phantoms),
            ("of which unexplained", self.phantoms_unexplained),
        ];
        let mut first = true;
        for (name, count) in fields.into_iter().filter(|&(_, count)| count > 0) {
            write!(f, "{}{name} {count}", if first { "" } else { ", " })?;
            first = false;
        }
        if first {
            write!(f, "nothing")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowFindings {
    #[serde(flatten)]
    pub window: Window,
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub acked: u64,
    /// Messages received once each, summed over subscribers.
    pub delivered: u64,
    pub stored: u64,
    pub totals: Counts,
    pub windows: Vec<WindowFindings>,
    /// Findings in no fault's window.
    pub outside_windows: Counts,
    /// The first silent losses and `prev` breaks, each with its subscriber,
    /// room, time and ids: where to start reading the nodes' logs.
    pub examples: Vec<String>,
}

/// One finding, with when it happened.
#[derive(Debug, Clone, Copy)]
enum Kind {
    AckedMissing { explained: bool },
    StoredTwice,
    SilentLoss(u64),
    Duplicate,
    Reordering,
    PrevBreak,
    Surfaced { explained: bool },
    Phantom { explained: bool },
}

impl Kind {
    fn count(self, counts: &mut Counts) {
        match self {
            Kind::AckedMissing { explained } => {
                counts.acked_missing += 1;
                counts.acked_missing_unexplained += u64::from(!explained);
            }
            Kind::StoredTwice => counts.stored_twice += 1,
            Kind::SilentLoss(messages) => counts.silent_losses += messages,
            Kind::Duplicate => counts.duplicates += 1,
            Kind::Reordering => counts.reorderings += 1,
            Kind::PrevBreak => counts.prev_breaks += 1,
            Kind::Surfaced { explained } => {
                counts.surfaced_losses += 1;
                counts.surfaced_unexplained += u64::from(!explained);
            }
            Kind::Phantom { explained } => {
                counts.phantoms += 1;
                counts.phantoms_unexplained += u64::from(!explained);
            }
        }
    }
}

/// Everything the checker reads.
pub struct Evidence<'a> {
    /// Per room, the stream in `XRANGE` order.
    pub histories: &'a [Vec<StoredEntry>],
    pub acked: &'a [Acked],
    pub subscribers: &'a [SubscriberLog],
    /// When the store lost data (seconds since the start).
    pub data_losses: &'a [f64],
    pub windows: &'a [Window],
}

/// How far around a finding a data loss still explains it, in seconds
/// (a client notices a loss a moment after the store had it).
const SLACK: f64 = 1.0;

pub fn check(evidence: &Evidence<'_>) -> Findings {
    let mut found: Vec<(f64, Kind)> = Vec::new();
    // The first data loss after `at`: what explains a message that was
    // acked (or received) at `at` and is gone from the history. Such a
    // finding is filed at the loss's time, in the loss's window.
    let loss_after = |at: f64| {
        evidence
            .data_losses
            .iter()
            .copied()
            .filter(|&loss| loss >= at - SLACK)
            .min_by(f64::total_cmp)
    };
    let loss_between = |from: f64, to: f64| {
        evidence
            .data_losses
            .iter()
            .any(|&loss| loss >= from - SLACK && loss <= to + SLACK)
    };

    // The history: each cmid once, each publisher's publishes in order.
    let mut by_cmid: Vec<HashMap<&str, StreamId>> = Vec::new();
    for history in evidence.histories {
        let mut cmids = HashMap::new();
        let mut newest_seq: HashMap<&str, u64> = HashMap::new();
        for entry in history {
            let Some(cmid) = entry.cmid.as_deref() else { continue };
            if cmids.insert(cmid, entry.id).is_some() {
                found.push((0.0, Kind::StoredTwice));
            }
            if let Some((publisher, seq)) = ordered_cmid(cmid) {
                let newest = newest_seq.entry(publisher).or_insert(seq);
                if seq < *newest {
                    found.push((0.0, Kind::Reordering));
                }
                *newest = (*newest).max(seq);
            }
        }
        by_cmid.push(cmids);
    }

    for ack in evidence.acked {
        let held = by_cmid.get(ack.room).and_then(|cmids| cmids.get(ack.cmid.as_str()));
        if held != Some(&ack.id) {
            let loss = loss_after(ack.at);
            found.push((
                loss.unwrap_or(ack.at),
                Kind::AckedMissing {
                    explained: loss.is_some(),
                },
            ));
        }
    }

    let mut delivered = 0;
    let mut examples = Vec::new();
    for (index, log) in evidence.subscribers.iter().enumerate() {
        let history: Vec<StreamId> = evidence
            .histories
            .get(log.room)
            .map_or_else(Vec::new, |history| history.iter().map(|entry| entry.id).collect());
        let held: HashSet<StreamId> = history.iter().copied().collect();
        let missing_between = |after: StreamId, before: Option<StreamId>| -> u64 {
            let from = history.partition_point(|&id| id <= after);
            let to = before.map_or(history.len(), |before| history.partition_point(|&id| id < before));
            to.saturating_sub(from) as u64
        };
        let mut received: HashSet<StreamId> = HashSet::new();
        // Subscribers start from the beginning of the room (`since: 0-0`).
        let mut last = StreamId::default();
        let mut last_at = 0.0;
        let mut told: Option<f64> = None;
        // What the subscriber saw since its last message, for the examples.
        let mut since_last: Vec<String> = Vec::new();
        for &(at, ref seen) in &log.events {
            match seen {
                Seen::Message { .. } => {}
                Seen::Note(note) => since_last.push(format!("{at:.3} {note}")),
                other => since_last.push(format!("{at:.3} {other:?}")),
            }
            match *seen {
                Seen::Subscribed { recovered: Some(false) } | Seen::Gap => {
                    found.push((
                        at,
                        Kind::Surfaced {
                            explained: loss_between(last_at, at),
                        },
                    ));
                    told = Some(at);
                }
                Seen::Subscribed { .. } | Seen::Closed { .. } | Seen::Note(_) => {}
                Seen::Message { id, prev } => {
                    if !received.insert(id) {
                        found.push((at, Kind::Duplicate));
                        continue;
                    }
                    delivered += 1;
                    if !held.contains(&id) {
                        let loss = loss_after(at);
                        found.push((
                            loss.unwrap_or(at),
                            Kind::Phantom {
                                explained: loss.is_some(),
                            },
                        ));
                        // A phantom belongs to a history the store no longer
                        // has (a restart without persistence, or a primary
                        // that ran writes after its replica took over): what
                        // lies between it and the held history says nothing,
                        // so order, `prev` and losses are judged from the
                        // last held message.
                        continue;
                    }
                    if id < last {
                        found.push((at, Kind::Reordering));
                        continue;
                    }
                    if told.is_none() {
                        let missing = missing_between(last, Some(id));
                        if missing > 0 {
                            found.push((at, Kind::SilentLoss(missing)));
                        }
                        if prev != last {
                            found.push((at, Kind::PrevBreak));
                        }
                        if (missing > 0 || prev != last) && examples.len() < 20 {
                            examples.push(format!(
                                "{at:.3} s: subscriber {index} (room {}) received {id} (prev {prev}) after {last} (received at {last_at:.3} s), {missing} between them untold; meanwhile: {}",
                                log.room,
                                since_last.join("; ")
                            ));
                        }
                    }
                    last = id;
                    last_at = at;
                    told = None;
                    since_last.clear();
                }
            }
        }
        // The run waited for every subscriber to catch up: what it still
        // lacks at the end, untold, is lost.
        if told.is_none() {
            let missing = missing_between(last, None);
            if missing > 0 {
                let end = log.events.last().map_or(0.0, |(at, _)| *at);
                found.push((end, Kind::SilentLoss(missing)));
                if examples.len() < 20 {
                    examples.push(format!(
                        "end: subscriber {index} (room {}) never received the last {missing} messages after {last}",
                        log.room
                    ));
                }
            }
        }
    }

    let mut totals = Counts::default();
    let mut outside_windows = Counts::default();
    let mut windows: Vec<WindowFindings> = evidence
        .windows
        .iter()
        .map(|window| WindowFindings {
            window: window.clone(),
            counts: Counts::default(),
        })
        .collect();
    for &(at, kind) in &found {
        kind.count(&mut totals);
        // Filed under the latest fault whose window holds it.
        let holder = windows
            .iter_mut()
            .filter(|window| at >= window.window.start && at <= window.window.end)
            .max_by(|a, b| a.window.start.total_cmp(&b.window.start));
        match holder {
            Some(window) => kind.count(&mut window.counts),
            None => kind.count(&mut outside_windows),
        }
    }
    Findings {
        acked: evidence.acked.len() as u64,
        delivered,
        stored: evidence.histories.iter().map(|history| history.len() as u64).sum(),
        totals,
        windows,
        outside_windows,
        examples,
    }
}

/// Publishers that wait for each ack before the next publish write
/// `{publisher}-{seq}` with publisher below 1000; their history must be in
/// sequence order. (Pipelining burst publishers, 1000 and up, may be
/// committed out of order across a reconnect, which the protocol allows.)
fn ordered_cmid(cmid: &str) -> Option<(&str, u64)> {
    let (publisher, seq) = cmid.split_once('-')?;
    if publisher.parse::<u32>().ok()? >= 1000 {
        return None;
    }
    Some((publisher, seq.parse().ok()?))
}

/// Reads what an entry's fields say: `p` (prev) and `t` (the message
/// frame's tail after prev, holding `"cmid":"..."` when one was given).
pub fn cmid_of_tail(tail: &str) -> Option<String> {
    let start = tail.find(r#""cmid":""#)? + r#""cmid":""#.len();
    let end = tail[start..].find('"')?;
    Some(tail[start..start + end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId(ms, 0)
    }

    fn history(ids: &[u64]) -> Vec<StoredEntry> {
        ids.iter()
            .map(|&ms| StoredEntry {
                id: id(ms),
                cmid: Some(format!("1-{ms}")),
            })
            .collect()
    }

    fn message(at: f64, ms: u64, prev: u64) -> (f64, Seen) {
        (
            at,
            Seen::Message {
                id: id(ms),
                prev: id(prev),
            },
        )
    }

    fn run(histories: &[Vec<StoredEntry>], acked: &[Acked], logs: &[SubscriberLog], losses: &[f64]) -> Counts {
        check(&Evidence {
            histories,
            acked,
            subscribers: logs,
            data_losses: losses,
            windows: &[],
        })
        .totals
    }

    #[test]
    fn an_exact_run_has_nothing_but_deliveries() {
        let histories = [history(&[1, 2, 3])];
        let acked: Vec<Acked> = [1, 2, 3]
            .iter()
            .map(|&ms| Acked {
                room: 0,
                cmid: format!("1-{ms}"),
                id: id(ms),
                at: 1.0,
            })
            .collect();
        let log = SubscriberLog {
            room: 0,
            events: vec![
                (0.0, Seen::Subscribed { recovered: Some(true) }),
                message(1.0, 1, 0),
                message(1.1, 2, 1),
                (1.2, Seen::Closed { code: Some(1012) }),
                (1.5, Seen::Subscribed { recovered: Some(true) }),
                message(1.6, 3, 2),
            ],
        };
        let findings = check(&Evidence {
            histories: &histories,
            acked: &acked,
            subscribers: &[log],
            data_losses: &[],
            windows: &[],
        });
        assert!(findings.totals.is_clean(), "{findings:?}");
        assert_eq!((findings.acked, findings.delivered, findings.stored), (3, 3, 3));
    }

    #[test]
    fn a_resume_without_since_is_a_silent_loss() {
        let histories = [history(&[1, 2, 3, 4])];
        let log = SubscriberLog {
            room: 0,
            events: vec![
                message(1.0, 1, 0),
                (1.2, Seen::Closed { code: None }),
                (1.5, Seen::Subscribed { recovered: None }),
                message(1.6, 4, 3),
            ],
        };
        let counts = run(&histories, &[], &[log], &[]);
        assert_eq!(counts.silent_losses, 2);
        assert_eq!(counts.prev_breaks, 1);
        assert!(!counts.every_loss_surfaced());
    }

    #[test]
    fn a_missing_tail_is_a_silent_loss() {
        let histories = [history(&[1, 2])];
        let log = SubscriberLog {
            room: 0,
            events: vec![message(1.0, 1, 0)],
        };
        assert_eq!(run(&histories, &[], &[log], &[]).silent_losses, 1);
    }

    #[test]
    fn duplicates_reorderings_and_phantoms_are_counted() {
        let histories = [history(&[1, 2, 3])];
        let log = SubscriberLog {
            room: 0,
            events: vec![
                message(1.0, 1, 0),
                message(1.1, 2, 1),
                message(1.2, 2, 1),
                message(1.3, 3, 2),
                message(1.4, 9, 3),
            ],
        };
        let counts = run(&histories, &[], &[log], &[]);
        assert_eq!(
            (
                counts.duplicates,
                counts.phantoms,
                counts.phantoms_unexplained,
                counts.silent_losses
            ),
            (1, 1, 1, 0)
        );
        let late = SubscriberLog {
            room: 0,
            events: vec![message(1.0, 2, 0), message(1.1, 1, 0), message(1.2, 3, 2)],
        };
        let counts = run(&histories, &[], &[late], &[]);
        assert_eq!(counts.reorderings, 1);
    }

    #[test]
    fn a_told_loss_after_a_store_loss_is_surfaced_and_explained() {
        // The store restarted empty at 2.0: 1 and 2 are gone; 10 and 11 came after.
        let histories = [history(&[10, 11])];
        let acked = vec![
            Acked {
                room: 0,
                cmid: "1-1".into(),
                id: id(1),
                at: 1.0,
            },
            Acked {
                room: 0,
                cmid: "1-2".into(),
                id: id(2),
                at: 1.5,
            },
        ];
        let log = SubscriberLog {
            room: 0,
            events: vec![
                message(1.0, 1, 0),
                message(1.5, 2, 1),
                (2.5, Seen::Subscribed { recovered: Some(false) }),
                message(3.0, 10, 0),
                message(3.1, 11, 10),
            ],
        };
        let counts = run(&histories, &acked, std::slice::from_ref(&log), &[2.0]);
        assert_eq!(counts.acked_missing, 2);
        assert_eq!(counts.phantoms, 2);
        assert_eq!(counts.surfaced_losses, 1);
        assert!(counts.every_loss_surfaced(), "{counts:?}");
        assert!(!counts.is_clean());
        // The same story with no store loss to explain it fails.
        let counts = run(&histories, &acked, &[log], &[]);
        assert_eq!(counts.acked_missing_unexplained, 2);
        assert_eq!(counts.surfaced_unexplained, 1);
        assert!(!counts.every_loss_surfaced());
    }

    #[test]
    fn phantoms_of_a_stale_primary_are_judged_apart_from_the_held_history() {
        // A frozen primary resumed at 2.0 and ran 25 and 27 (which reached
        // subscribers) before learning its replica had taken over with 20,
        // 26 and 28; the relay told the gap when it resubscribed.
        let histories = [history(&[10, 20, 26, 28])];
        let log = SubscriberLog {
            room: 0,
            events: vec![
                message(1.0, 10, 0),
                message(2.0, 25, 10),
                message(2.1, 27, 25),
                (2.2, Seen::Gap),
                message(2.3, 28, 26),
            ],
        };
        let counts = run(&histories, &[], std::slice::from_ref(&log), &[2.0]);
        assert_eq!((counts.phantoms, counts.phantoms_unexplained), (2, 0));
        assert_eq!(
            (counts.silent_losses, counts.prev_breaks, counts.reorderings),
            (0, 0, 0)
        );
        assert_eq!((counts.surfaced_losses, counts.surfaced_unexplained), (1, 0));
        assert!(counts.every_loss_surfaced(), "{counts:?}");
        // Untold, the held messages the phantoms hid are silent losses.
        let untold = SubscriberLog {
            room: 0,
            events: vec![message(1.0, 10, 0), message(2.0, 25, 10), message(2.3, 28, 26)],
        };
        let counts = run(&histories, &[], &[untold], &[2.0]);
        assert_eq!((counts.silent_losses, counts.prev_breaks), (2, 1));
    }

    #[test]
    fn the_store_holds_each_cmid_once_and_each_publisher_in_order() {
        let mut entries = history(&[1, 2]);
        entries.push(StoredEntry {
            id: id(3),
            cmid: Some("1-1".into()),
        });
        let counts = run(&[entries], &[], &[], &[]);
        assert_eq!((counts.stored_twice, counts.reorderings), (1, 1));
        // A burst publisher (1000 and up) may be committed out of order.
        let burst = vec![
            StoredEntry {
                id: id(1),
                cmid: Some("1001-2".into()),
            },
            StoredEntry {
                id: id(2),
                cmid: Some("1001-1".into()),
            },
        ];
        assert!(run(&[burst], &[], &[], &[]).is_clean());
    }

    #[test]
    fn findings_land_in_the_latest_window_that_holds_them() {
        let histories = [history(&[1, 2, 3])];
        let log = SubscriberLog {
            room: 0,
            events: vec![message(1.0, 1, 0), message(5.0, 3, 2)],
        };
        let windows = [
            Window {
                label: "kill node 1".into(),
                start: 4.0,
                end: 9.0,
            },
            Window {
                label: "freeze redis".into(),
                start: 0.0,
                end: 2.0,
            },
            Window {
                label: "an earlier, longer fault".into(),
                start: 3.0,
                end: 9.0,
            },
        ];
        let findings = check(&Evidence {
            histories: &histories,
            acked: &[],
            subscribers: &[log],
            data_losses: &[],
            windows: &windows,
        });
        assert_eq!(findings.windows[0].counts.silent_losses, 1);
        assert!(findings.windows[1].counts.is_clean());
        assert!(findings.windows[2].counts.is_clean());
        assert!(findings.outside_windows.is_clean());
    }

    #[test]
    fn entry_tails_give_their_cmid() {
        let tail = r#"","from":null,"ts":17,"cmid":"3-41","body":{"p":3}}"#;
        assert_eq!(cmid_of_tail(tail).as_deref(), Some("3-41"));
        assert_eq!(cmid_of_tail(r#"","from":null,"ts":17,"body":{}}"#), None);
    }
}
