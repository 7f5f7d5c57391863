//! Presence as every broker stores it (presence.md): one entry per
//! connection with a deadline, counted per user, so that a user with two
//! tabs on two nodes is one member and a killed node's entries expire.
//!
//! The model: an entry joins (its user's entry count goes 0 -> 1: a
//! *join*) and leaves or expires (1 -> 0: a *leave*). Anonymous entries
//! (no user) change the count and are never listed. Every join or leave
//! bumps the room's *version* and is published as a [`PresenceChange`];
//! nothing else is, so a change costs O(1) whatever the room's size.
//! The newest [`CHANGE_LOG`] changes are kept, so a node whose live feed
//! dropped some can read what it missed (see [`covers`]).
//! [`RoomPresence`] is that model in memory, for the memory broker; the
//! Redis broker runs the same steps in `redis/presence.lua`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;

use tokio::time::Instant;

/// One connection's entry in a room's presence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresenceEntry {
    /// Unique per connection and node process; no spaces.
    pub id: String,
    /// The connection's user; `None` for an anonymous one.
    pub user: Option<String>,
}

/// One join or leave of a room's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The room's presence version after the change (starts at 1).
    pub version: u64,
    /// Who joined or left; `None` for an anonymous connection.
    pub user: Option<String>,
    /// Joined (true) or left (false).
    pub joined: bool,
    /// The room's count after the change.
    pub count: u64,
}

/// A room's presence as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceState {
    /// Distinct users plus anonymous connections.
    pub count: u64,
    /// The version of the last change reflected in the state.
    pub version: u64,
    /// Members in sorted order (a page of them).
    pub members: Vec<String>,
}

/// Changes each room keeps for nodes that missed some (about).
pub const CHANGE_LOG: usize = 1000;

/// Whether `changes`, read from a room's change log after version `after`,
/// are every change up to the room's `current` version: they start right
/// after `after` and end at `current`. If not, the log was trimmed past
/// what the reader missed.
#[must_use]
pub fn covers(after: u64, current: u64, changes: &[PresenceChange]) -> bool {
    match (changes.first(), changes.last()) {
        (Some(first), Some(last)) => first.version == after + 1 && last.version == current,
        _ => current <= after,
    }
}

/// One room's presence in memory; see the module docs.
#[derive(Debug, Default)]
pub struct RoomPresence {
    entries: HashMap<String, (Option<String>, Instant)>,
    users: BTreeMap<String, u32>,
    anonymous: u64,
    version: u64,
    log: VecDeque<PresenceChange>,
}

impl RoomPresence {
    fn count(&self) -> u64 {
        u64::try_from(self.users.len()).unwrap_or(u64::MAX) + self.anonymous
    }

    fn change(&mut self, user: Option<&str>, joined: bool) -> PresenceChange {
        self.version += 1;
        let change = PresenceChange {
            version: self.version,
            user: user.map(str::to_owned),
            joined,
            count: self.count(),
        };
        if self.log.len() == CHANGE_LOG {
            self.log.pop_front();
        }
        self.log.push_back(change.clone());
        change
    }

    /// The logged changes after `after`, if the log still holds them all.
    #[must_use]
    pub fn changes_after(&self, after: u64) -> Option<Vec<PresenceChange>> {
        let changes: Vec<PresenceChange> = self
            .log
            .iter()
            .filter(|change| change.version > after)
            .cloned()
            .collect();
        covers(after, self.version, &changes).then_some(changes)
    }

    /// Adds or refreshes an entry; the change when its user joined.
    pub fn add(&mut self, entry: &PresenceEntry, deadline: Instant) -> Option<PresenceChange> {
        if let Some(existing) = self.entries.get_mut(&entry.id) {
            existing.1 = deadline;
            return None;
        }
        self.entries.insert(entry.id.clone(), (entry.user.clone(), deadline));
        match &entry.user {
            None => {
                self.anonymous += 1;
                Some(self.change(None, true))
            }
            Some(user) => {
                let count = self.users.entry(user.clone()).or_insert(0);
                *count += 1;
                (*count == 1).then(|| self.change(Some(user), true))
            }
        }
    }

    /// Removes an entry; the change when its user left.
    pub fn remove(&mut self, id: &str) -> Option<PresenceChange> {
        let (user, _) = self.entries.remove(id)?;
        match user {
            None => {
                self.anonymous = self.anonymous.saturating_sub(1);
                Some(self.change(None, false))
            }
            Some(user) => {
                let count = self.users.get_mut(&user)?;
                *count = count.saturating_sub(1);
                if *count > 0 {
                    return None;
                }
                self.users.remove(&user);
                Some(self.change(Some(&user), false))
            }
        }
    }

    /// Removes entries whose deadline passed; the changes, in order.
    pub fn sweep(&mut self, now: Instant) -> Vec<PresenceChange> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// The count, version and up to `limit` members after `after`.
    #[must_use]
    pub fn state(&self, after: Option<&str>, limit: usize) -> PresenceState {
        let start = after.map_or(Bound::Unbounded, |after| Bound::Excluded(after.to_owned()));
        PresenceState {
            count: self.count(),
            version: self.version,
            members: self
                .users
                .range((start, Bound::Unbounded))
                .take(limit)
                .map(|(user, _)| user.clone())
                .collect(),
        }
    }

    /// Whether nothing is left to remember (the version may restart).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, user: Option<&str>) -> PresenceEntry {
        PresenceEntry {
            id: id.to_owned(),
            user: user.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn a_user_counts_once_whatever_their_connections() {
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let mut room = RoomPresence::default();
        let joined = room.add(&entry("a1", Some("ann")), later).unwrap();
        assert_eq!((joined.version, joined.joined, joined.count), (1, true, 1));
        assert_eq!(room.add(&entry("a2", Some("ann")), later), None);
        assert_eq!(
            room.add(&entry("a2", Some("ann")), later),
            None,
            "a refresh is no change"
        );
        assert_eq!(room.remove("a1"), None, "one of two tabs closing changes nothing");
        let anonymous = room.add(&entry("x", None), later).unwrap();
        assert_eq!((anonymous.user, anonymous.count), (None, 2));
        let left = room.remove("a2").unwrap();
        assert_eq!(
            (left.user.as_deref(), left.joined, left.count, left.version),
            (Some("ann"), false, 1, 3)
        );
        assert_eq!(room.remove("a2"), None, "leaving twice is no change");
        assert_eq!(room.state(None, 10).members, Vec::<String>::new());
    }

    #[test]
    fn a_log_covers_a_range_only_when_it_starts_right_after_it() {
        let change = |version| PresenceChange {
            version,
            user: None,
            joined: true,
            count: 1,
        };
        assert!(covers(5, 7, &[change(6), change(7)]));
        assert!(!covers(5, 7, &[change(7)]), "6 was trimmed away");
        assert!(!covers(5, 8, &[change(6), change(7)]), "8 is not logged yet");
        assert!(covers(7, 7, &[]));
        assert!(!covers(5, 7, &[]));
    }

    #[tokio::test]
    async fn expired_entries_leave_and_members_page_in_order() {
        let now = Instant::now();
        let mut room = RoomPresence::default();
        for (index, user) in ["cy", "ann", "bo"].iter().enumerate() {
            room.add(
                &entry(&format!("e{index}"), Some(user)),
                now + std::time::Duration::from_secs(1),
            );
        }
        room.add(&entry("keep", Some("dee")), now + std::time::Duration::from_secs(9));
        assert_eq!(room.state(None, 2).members, ["ann", "bo"]);
        assert_eq!(room.state(Some("bo"), 2).members, ["cy", "dee"]);
        let mut gone: Vec<_> = room
            .sweep(now + std::time::Duration::from_secs(2))
            .into_iter()
            .map(|change| change.user.unwrap())
            .collect();
        gone.sort();
        assert_eq!(gone, ["ann", "bo", "cy"]);
        assert_eq!(room.state(None, 10).members, ["dee"]);
        assert_eq!(room.state(None, 10).count, 1);
    }
}
