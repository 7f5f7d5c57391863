//! Presence on a node (presence.md): the timing of the node's presence
//! work and the batching of a room's changes into `presence` frames.
//!
//! A subscription with `presence: true` is a *watcher*: it has an entry in
//! the room's presence (see `broker::presence`) and receives the room's
//! changes. Changes arrive from the broker one by one, in version order;
//! the hub collects them per room and, at most once a second, sends each
//! watcher one frame with what changed since what it was last told (the
//! version of its snapshot, then of its last frame). A user who joined and
//! left inside one batch nets to nothing and shows in neither list. Most
//! watchers of a room share one frame, built once per batch; only one that
//! was still resuming, or whose snapshot is newer than the batch's start,
//! gets its own.
//!
//! The node refreshes its entries every quarter of the TTL, and an entry
//! lives half the TTL: a live node's entries never lapse even if one
//! refresh is lost, and a killed node's expire within half the TTL. The
//! same upkeep sweeps expired entries of rooms this node watches, so they
//! are noticed within the TTL in all.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::PresenceChange;
use crate::protocol::{RoomName, server_frame};

/// How often a room's changes are sent to its watchers, at most.
pub const PRESENCE_BATCH: Duration = Duration::from_secs(1);

/// Changes a resuming watcher may hold before the oldest are dropped.
pub const MAX_PENDING_CHANGES: usize = 10_000;

/// How long presence entries live and how often the node renews them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceTiming {
    /// `RELAY_PRESENCE_TTL_SECS`: a killed node's members are gone within it.
    pub ttl: Duration,
}

impl PresenceTiming {
    /// How long an entry lives unless refreshed: half the TTL.
    #[must_use]
    pub fn entry_lifetime(self) -> Duration {
        self.ttl / 2
    }

    /// How often the node refreshes its entries and sweeps expired ones.
    #[must_use]
    pub fn upkeep_interval(self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(250))
    }
}

/// A watcher's place in the presence of a room.
#[derive(Debug)]
pub struct Watcher {
    /// Its entry, refreshed by the node and removed when it leaves.
    pub entry: crate::broker::PresenceEntry,
    /// The version it has been told about: `None` until its snapshot is read.
    pub seen: Option<u64>,
    /// Changes that arrived while it could not be sent frames yet.
    pub pending: Vec<PresenceChange>,
}

impl Watcher {
    /// A watcher whose snapshot is yet to be read.
    #[must_use]
    pub fn new(entry: crate::broker::PresenceEntry) -> Self {
        Self {
            entry,
            seen: None,
            pending: Vec::new(),
        }
    }

    /// Keeps changes for later (its snapshot or its resume is not done).
    pub fn hold(&mut self, changes: &[PresenceChange]) {
        let seen = self.seen.unwrap_or(0);
        self.pending
            .extend(changes.iter().filter(|change| change.version > seen).cloned());
        if self.pending.len() > MAX_PENDING_CHANGES {
            let excess = self.pending.len() - MAX_PENDING_CHANGES;
            self.pending.drain(..excess);
            tracing::warn!(
                dropped = excess,
                "a resuming watcher held too many presence changes; the oldest were dropped"
            );
        }
    }

    /// The frame to send it now, given the room's batch and the batch's
    /// shared frame (built on first use); advances what it has seen.
    pub fn frame(&mut self, room: &RoomName, batch: &[PresenceChange], shared: &mut Option<String>) -> Option<String> {
        let seen = self.seen?;
        let first = batch.first().map_or(u64::MAX, |change| change.version);
        let newest = batch.last().map_or(0, |change| change.version);
        let frame = if self.pending.is_empty() && first > seen {
            if shared.is_none() {
                *shared = summarize(room, batch.iter());
            }
            shared.clone()
        } else {
            let pending = std::mem::take(&mut self.pending);
            summarize(
                room,
                pending
                    .iter()
                    .chain(batch.iter())
                    .filter(|change| change.version > seen),
            )
        };
        self.seen = Some(seen.max(newest));
        frame
    }
}

/// One `presence` frame for a run of changes in version order: each user's
/// joins minus leaves decides whether they show as joined, left or not at
/// all; the count is the last change's. `None` when the run is empty.
#[must_use]
pub fn summarize<'a>(room: &RoomName, changes: impl Iterator<Item = &'a PresenceChange>) -> Option<String> {
    let mut net: BTreeMap<&str, i64> = BTreeMap::new();
    let mut count = None;
    for change in changes {
        count = Some(change.count);
        if let Some(user) = &change.user {
            *net.entry(user).or_default() += if change.joined { 1 } else { -1 };
        }
    }
    let count = count?;
    let joined: Vec<&str> = net.iter().filter(|(_, net)| **net > 0).map(|(user, _)| *user).collect();
    let left: Vec<&str> = net.iter().filter(|(_, net)| **net < 0).map(|(user, _)| *user).collect();
    Some(server_frame::presence(room, &joined, &left, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::PresenceEntry;

    fn change(version: u64, user: &str, joined: bool, count: u64) -> PresenceChange {
        PresenceChange {
            version,
            user: Some(user.to_owned()),
            joined,
            count,
        }
    }

    fn room() -> RoomName {
        RoomName::parse("r").unwrap()
    }

    #[test]
    fn a_join_and_leave_inside_one_batch_cancel_out() {
        let batch = [
            change(1, "ann", true, 1),
            change(2, "bo", true, 2),
            change(3, "ann", false, 1),
            change(4, "cy", false, 0),
            change(5, "cy", true, 1),
        ];
        assert_eq!(
            summarize(&room(), batch.iter()).unwrap(),
            r#"{"type":"presence","room":"r","joined":["bo"],"left":[],"count":1}"#
        );
        assert_eq!(summarize(&room(), std::iter::empty()), None);
    }

    #[test]
    fn a_watcher_is_told_only_what_is_newer_than_its_snapshot() {
        let entry = PresenceEntry {
            id: "n:1".to_owned(),
            user: Some("me".to_owned()),
        };
        let mut watcher = Watcher::new(entry);
        let batch = [change(4, "ann", true, 2), change(5, "bo", true, 3)];
        let mut shared = None;
        assert_eq!(watcher.frame(&room(), &batch, &mut shared), None, "no snapshot yet");
        watcher.hold(&batch);
        watcher.seen = Some(4);
        let next = [change(6, "cy", true, 4)];
        let mut shared = None;
        let frame = watcher.frame(&room(), &next, &mut shared).unwrap();
        assert!(frame.contains(r#""joined":["bo","cy"]"#), "{frame}");
        assert!(shared.is_none(), "a watcher with held changes gets its own frame");
        let mut others = Watcher::new(PresenceEntry {
            id: "n:2".to_owned(),
            user: None,
        });
        others.seen = Some(6);
        assert_eq!(
            others.frame(&room(), &next, &mut shared),
            None,
            "nothing newer than its snapshot"
        );
        let mut late = Watcher::new(PresenceEntry {
            id: "n:3".to_owned(),
            user: None,
        });
        late.seen = Some(5);
        let later = [change(7, "dee", true, 5)];
        let mut shared = None;
        let first = late.frame(&room(), &later, &mut shared).unwrap();
        assert_eq!(shared.as_deref(), Some(first.as_str()), "the shared frame is reused");
        assert_eq!(watcher.frame(&room(), &later, &mut shared), Some(first));
        assert_eq!(watcher.seen, Some(7));
    }
}
