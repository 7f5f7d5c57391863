//! Presence across a drain: the entries a draining node keeps for a
//! while, so that its users, told to reconnect after `delay_ms`, join on
//! another node before they leave here, and watchers see neither.
//!
//! A draining node tells each client to come back after its own delay
//! (spread over the drain window). Removing the node's entries when the
//! drain starts would show every one of its users as leaving, then joining
//! again up to the window later. Instead each connection closed by the
//! drain hands its presence entries over: they stay until its delay plus
//! [`HANDOVER_MARGIN`] (the reconnect's own time), then leave. A user who
//! rejoined elsewhere by then is still present (a user counts once,
//! whatever its entries), so the removal changes nothing visible; one who
//! did not come back leaves then. Every entry is gone before the node
//! exits: the drain ends the hand-over at the window's end plus the margin
//! and removes what is left. The list is small (the node's presence
//! subscriptions) and lives only during a drain.

use std::time::{Duration, Instant};

use crate::broker::PresenceEntry;
use crate::protocol::RoomName;

/// How long after a client's reconnect delay its entries stay: the time
/// to reconnect, subscribe and join on another node.
pub const HANDOVER_MARGIN: Duration = Duration::from_millis(800);

/// One entry waiting to leave.
#[derive(Debug, Clone)]
struct Pending {
    room: RoomName,
    entry: PresenceEntry,
    due: Instant,
}

/// The entries handed over during a drain, each with when it leaves.
#[derive(Debug, Default)]
pub struct Handover {
    pending: Vec<Pending>,
}

impl Handover {
    /// Keeps `entry` of `room` until `due`.
    pub fn keep(&mut self, room: RoomName, entry: PresenceEntry, due: Instant) {
        self.pending.push(Pending { room, entry, due });
    }

    /// Takes the entries due by `now`, grouped by room.
    pub fn take_due(&mut self, now: Instant) -> Vec<(RoomName, Vec<PresenceEntry>)> {
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|pending| pending.due <= now);
        self.pending = kept;
        group(due)
    }

    /// Takes every entry, due or not, grouped by room.
    pub fn take_all(&mut self) -> Vec<(RoomName, Vec<PresenceEntry>)> {
        group(std::mem::take(&mut self.pending))
    }

    /// When the next entry is due, if any waits.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|pending| pending.due).min()
    }

    /// Whether no entry waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

fn group(pending: Vec<Pending>) -> Vec<(RoomName, Vec<PresenceEntry>)> {
    let mut rooms: Vec<(RoomName, Vec<PresenceEntry>)> = Vec::new();
    for Pending { room, entry, .. } in pending {
        match rooms.iter_mut().find(|(known, _)| *known == room) {
            Some((_, entries)) => entries.push(entry),
            None => rooms.push((room, vec![entry])),
        }
    }
    rooms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> PresenceEntry {
        PresenceEntry {
            id: id.to_owned(),
            user: Some(format!("user-{id}")),
        }
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn entries_leave_when_due_grouped_by_room_and_the_rest_wait() {
        let start = Instant::now();
        let mut handover = Handover::default();
        handover.keep(room("a"), entry("1"), start + Duration::from_secs(1));
        handover.keep(room("b"), entry("2"), start + Duration::from_secs(3));
        handover.keep(room("a"), entry("3"), start + Duration::from_secs(2));
        assert_eq!(handover.next_due(), Some(start + Duration::from_secs(1)));
        assert!(handover.take_due(start).is_empty());

        let due = handover.take_due(start + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, room("a"));
        let ids: Vec<_> = due[0].1.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids, ["1", "3"]);
        assert_eq!(handover.next_due(), Some(start + Duration::from_secs(3)));

        let rest = handover.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1[0].id, "2");
        assert!(handover.is_empty());
        assert_eq!(handover.next_due(), None);
    }
}
