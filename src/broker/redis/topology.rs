//! A Redis Cluster's slot map: which primary serves the slot of a room.
//!
//! Every key and the channel of a room carry the room's hash tag
//! (`{room}`, see [`super::keys`]), and a room name never contains a
//! brace, so a room's slot is CRC16 (XMODEM) of its name modulo 16384, as
//! the cluster specification defines it. The map is read from
//! `CLUSTER SLOTS`; [`super::shards`] refreshes it.

use redis::Value;

use crate::protocol::RoomName;

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The slot of a room: every key of the room hashes to it.
#[must_use]
pub(super) fn slot_of(room: &RoomName) -> u16 {
    XMODEM.checksum(room.as_str().as_bytes()) % SLOTS
}

/// Slot ranges and the primary (`host:port`) serving each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Sorted by first slot; inclusive ranges.
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply. `asked` is the node that answered:
    /// an empty host in the reply means that node's own host.
    pub(super) fn parse(reply: &Value, asked_host: &str) -> Option<SlotMap> {
        let Value::Array(entries) = reply else { return None };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else { return None };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_owned()
            } else {
                host
            };
            let Value::Int(port) = primary.get(1)? else { return None };
            ranges.push((
                u16::try_from(*start).ok()?,
                u16::try_from(*end).ok()?,
                format!("{host}:{port}"),
            ));
        }
        ranges.sort();
        Some(SlotMap { ranges })
    }

    /// The primary serving `slot`, if any does.
    pub(super) fn owner_of_slot(&self, slot: u16) -> Option<&str> {
        let index = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (start, end, address) = self.ranges.get(index.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(address.as_str())
    }

    /// The primary serving `room`, if any does.
    pub(super) fn owner(&self, room: &RoomName) -> Option<&str> {
        self.owner_of_slot(slot_of(room))
    }

    /// Every primary that serves a slot, each once, sorted.
    pub(super) fn primaries(&self) -> Vec<String> {
        let mut primaries: Vec<String> = self.ranges.iter().map(|(_, _, address)| address.clone()).collect();
        primaries.sort();
        primaries.dedup();
        primaries
    }

    /// Whether no slot has an owner (never read, or the reply was empty).
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            Value::Array(vec![bulk(host), Value::Int(port + 1), bulk("replica")]),
        ])
    }

    #[test]
    fn a_room_hashes_as_the_cluster_specification_says() {
        // The specification's example: "123456789" is slot 12739 (CRC16
        // XMODEM 0x31C3), and `CLUSTER KEYSLOT` agrees for these.
        assert_eq!(slot_of(&RoomName::parse("123456789").unwrap()), 12739);
        assert_eq!(slot_of(&RoomName::parse("foo").unwrap()), 12182);
        assert_eq!(slot_of(&RoomName::parse("room-1").unwrap()), 12343);
    }

    #[test]
    fn the_map_finds_each_slot_and_no_more() {
        let reply = Value::Array(vec![
            range(10923, 16383, "127.0.0.1", 7002),
            range(0, 5460, "", 7000),
            range(5461, 10922, "127.0.0.1", 7001),
        ]);
        let map = SlotMap::parse(&reply, "10.0.0.9").unwrap();
        assert_eq!(map.owner_of_slot(0), Some("10.0.0.9:7000"));
        assert_eq!(map.owner_of_slot(5460), Some("10.0.0.9:7000"));
        assert_eq!(map.owner_of_slot(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.owner_of_slot(16383), Some("127.0.0.1:7002"));
        assert_eq!(map.primaries().len(), 3);
        let partial = SlotMap::parse(&Value::Array(vec![range(100, 200, "h", 1)]), "x").unwrap();
        assert_eq!(partial.owner_of_slot(99), None);
        assert_eq!(partial.owner_of_slot(201), None);
        assert!(SlotMap::parse(&Value::Int(1), "x").is_none());
        assert!(SlotMap::default().is_empty());
    }
}
