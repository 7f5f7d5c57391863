//! Names of a room's Redis keys and channel. Every name carries the room's
//! hash tag, `{room}`, so that on a Redis Cluster the stream, the
//! idempotency keys and the channel of a room live on one slot and one
//! script call can touch them all.

use crate::protocol::RoomName;

/// Key and channel names of rooms under one prefix (`RELAY_KEY_PREFIX`).
#[derive(Debug, Clone)]
pub(super) struct KeyScheme {
    prefix: String,
}

impl KeyScheme {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}:{room}:s`: the room's history stream.
    pub(super) fn stream(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:s", self.prefix, room)
    }

    /// `{prefix}:{room}:c`: the room's live channel.
    pub(super) fn channel(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:c", self.prefix, room)
    }

    /// `{prefix}:{room}:i:{cmid}`: a committed `cmid`. Without a `cmid`, a
    /// key of the same slot that the script never touches.
    pub(super) fn idempotency(&self, room: &RoomName, cmid: Option<&str>) -> String {
        match cmid {
            Some(cmid) => format!("{}:{{{}}}:i:{}", self.prefix, room, cmid),
            None => format!("{}:{{{}}}:i", self.prefix, room),
        }
    }

    /// The room's presence keys, in the order `presence.lua` takes them:
    /// entries, entry count per user, members, meta, recent changes.
    pub(super) fn presence(&self, room: &RoomName) -> [String; 5] {
        ["pe", "pc", "pu", "pm", "pl"].map(|suffix| format!("{}:{{{}}}:{suffix}", self.prefix, room))
    }

    /// The room a live channel belongs to.
    pub(super) fn room_of_channel(&self, channel: &str) -> Option<RoomName> {
        let inner = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:c")?;
        RoomName::parse(inner).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_room_hash_tag() {
        let keys = KeyScheme::new("relay");
        let room = RoomName::parse("team:42").unwrap();
        assert_eq!(keys.stream(&room), "relay:{team:42}:s");
        assert_eq!(keys.channel(&room), "relay:{team:42}:c");
        assert_eq!(keys.idempotency(&room, Some("c-1")), "relay:{team:42}:i:c-1");
        assert_eq!(keys.presence(&room)[0], "relay:{team:42}:pe");
        assert_eq!(keys.room_of_channel("relay:{team:42}:c"), Some(room));
        assert_eq!(keys.room_of_channel("other:{team:42}:c"), None);
    }
}
