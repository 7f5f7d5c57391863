//! Exhaustive delivery accounting: every message every subscriber should
//! get, counted as received once, lost, duplicated or out of order.

use std::collections::HashMap;

use serde::Serialize;

use crate::client::Payload;

/// What one subscriber received from each publisher it expects.
#[derive(Debug, Default)]
pub struct SubscriberLedger {
    tracks: HashMap<u32, Track>,
    unexpected: u64,
}

#[derive(Debug)]
struct Track {
    counts: Vec<u8>,
    highest: Option<u32>,
    out_of_order: u64,
}

impl SubscriberLedger {
    /// Expects `messages` messages (sequences 0..messages) from each of
    /// `publishers`.
    pub fn expecting(publishers: impl IntoIterator<Item = u32>, messages: u32) -> Self {
        let tracks = publishers
            .into_iter()
            .map(|publisher| {
                (
                    publisher,
                    Track {
                        counts: vec![0; messages as usize],
                        highest: None,
                        out_of_order: 0,
                    },
                )
            })
            .collect();
        Self { tracks, unexpected: 0 }
    }

    pub fn record(&mut self, payload: &Payload) {
        let Some(track) = self.tracks.get_mut(&payload.publisher) else {
            self.unexpected += 1;
            return;
        };
        let Some(count) = track.counts.get_mut(payload.seq as usize) else {
            self.unexpected += 1;
            return;
        };
        if *count == 0 && track.highest.is_some_and(|highest| payload.seq < highest) {
            track.out_of_order += 1;
        }
        *count = count.saturating_add(1);
        track.highest = Some(track.highest.map_or(payload.seq, |highest| highest.max(payload.seq)));
    }

    /// Whether every expected message arrived at least once.
    pub fn complete(&self) -> bool {
        self.tracks
            .values()
            .all(|track| track.counts.iter().all(|&count| count > 0))
    }

    pub fn received(&self) -> u64 {
        self.tracks
            .values()
            .flat_map(|track| track.counts.iter())
            .map(|&count| u64::from(count))
            .sum::<u64>()
            + self.unexpected
    }

    pub fn tally(&self) -> Correctness {
        let mut tally = Correctness {
            unexpected: self.unexpected,
            ..Correctness::default()
        };
        for track in self.tracks.values() {
            tally.expected += track.counts.len() as u64;
            tally.out_of_order += track.out_of_order;
            for &count in &track.counts {
                match count {
                    0 => tally.lost += 1,
                    count => {
                        tally.delivered += 1;
                        tally.duplicated += u64::from(count - 1);
                    }
                }
            }
        }
        tally
    }
}

/// Delivery accounting summed over subscribers.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Correctness {
    /// Messages that should have been delivered (per subscriber).
    pub expected: u64,
    /// Of those, delivered at least once.
    pub delivered: u64,
    pub lost: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// Messages that arrived after a later one from the same publisher.
    pub out_of_order: u64,
    /// Messages no subscriber should have received.
    pub unexpected: u64,
}

impl Correctness {
    pub fn add(&mut self, other: Correctness) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
    }

    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.unexpected == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(publisher: u32, seq: u32) -> Payload {
        Payload {
            publisher,
            seq,
            sent_us: 0,
        }
    }

    #[test]
    fn losses_duplicates_reorders_and_strangers_are_each_counted() {
        let mut ledger = SubscriberLedger::expecting([1, 2], 4);
        for (publisher, seq) in [
            (1, 0),
            (1, 2),
            (1, 1),
            (1, 2),
            (2, 0),
            (2, 1),
            (2, 2),
            (2, 3),
            (3, 0),
            (1, 9),
        ] {
            ledger.record(&payload(publisher, seq));
        }
        assert!(!ledger.complete());
        let tally = ledger.tally();
        assert_eq!(
            tally,
            Correctness {
                expected: 8,
                delivered: 7,
                lost: 1,
                duplicated: 1,
                out_of_order: 1,
                unexpected: 2,
            }
        );
        assert!(!tally.is_exact());
    }

    #[test]
    fn an_exact_run_is_exact() {
        let mut ledger = SubscriberLedger::expecting([7], 3);
        for seq in 0..3 {
            ledger.record(&payload(7, seq));
        }
        assert!(ledger.complete());
        assert!(ledger.tally().is_exact());
        assert_eq!(ledger.received(), 3);
    }
}
