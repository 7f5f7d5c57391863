//! Presence and signals on Redis. Each presence operation is one call of
//! `presence.lua` on the room's keys ([`KeyScheme::presence`]), which
//! publishes every join and leave on the room's live channel; a signal is
//! a plain publish on that channel. Both travel beside the room's messages,
//! so they reach exactly the nodes that carry the room (and, on a cluster,
//! stay on its shard). Live payloads are told apart by their first byte:
//! `p` a presence change, `s` a signal, anything else a message.

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::bounded;
use super::keys::KeyScheme;
use crate::broker::presence::covers;
use crate::broker::{BrokerError, PresenceChange, PresenceEntry, PresenceState};
use crate::protocol::RoomName;

/// Most expired entries one call removes; the rest go on the next sweep.
const SWEEP_BATCH: usize = 500;
/// Recent changes kept per room for nodes that missed some (about: the
/// stream is trimmed by whole nodes).
const LOG_MAXLEN: usize = crate::broker::presence::CHANGE_LOG;

/// What a live payload carries.
pub(super) enum LivePayload<'a> {
    /// A message frame (with its trace prefix, if any).
    Message(&'a [u8]),
    /// A presence change.
    Presence(PresenceChange),
    /// A signal frame.
    Signal(&'a [u8]),
    /// A presence change this node cannot read.
    Unreadable,
}

/// Tells a live payload's kind by its first byte.
pub(super) fn classify(payload: &[u8]) -> LivePayload<'_> {
    match payload.split_first() {
        Some((b's', frame)) => LivePayload::Signal(frame),
        Some((b'p', change)) => parse_change(change).map_or(LivePayload::Unreadable, LivePayload::Presence),
        _ => LivePayload::Message(payload),
    }
}

/// `<version> <+|-> <count> <user>` as `presence.lua` publishes it.
fn parse_change(text: &[u8]) -> Option<PresenceChange> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.splitn(4, ' ');
    let version = parts.next()?.parse().ok()?;
    let joined = match parts.next()? {
        "+" => true,
        "-" => false,
        _ => return None,
    };
    let count = parts.next()?.parse().ok()?;
    let user = parts.next()?;
    Some(PresenceChange {
        version,
        user: (!user.is_empty()).then(|| user.to_owned()),
        joined,
        count,
    })
}

/// The member a room's entry sorted set holds for `entry`.
fn member(entry: &PresenceEntry) -> String {
    format!("{} {}", entry.id, entry.user.as_deref().unwrap_or(""))
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Presence and signal commands of one broker.
pub(super) struct RedisPresence {
    script: Script,
    keys: KeyScheme,
    publish_command: &'static str,
}

impl RedisPresence {
    pub(super) fn new(keys: KeyScheme, publish_command: &'static str) -> Self {
        let source = include_str!("presence.lua")
            .replace("@PUBLISH@", publish_command)
            .replace("@SWEEP_BATCH@", &SWEEP_BATCH.to_string())
            .replace("@LOG_MAXLEN@", &LOG_MAXLEN.to_string());
        Self {
            script: Script::new(&source),
            keys,
            publish_command,
        }
    }

    async fn run(
        &self,
        mut connection: ConnectionManager,
        room: &RoomName,
        args: &[String],
    ) -> Result<Value, BrokerError> {
        let mut invocation = self.script.prepare_invoke();
        for key in self.keys.presence(room) {
            invocation.key(key);
        }
        invocation.key(self.keys.channel(room));
        for arg in args {
            invocation.arg(arg);
        }
        bounded(invocation.invoke_async(&mut connection)).await
    }

    pub(super) async fn join(
        &self,
        connection: ConnectionManager,
        room: &RoomName,
        entry: &PresenceEntry,
        lifetime: std::time::Duration,
        list: usize,
    ) -> Result<PresenceState, BrokerError> {
        let args = [
            "join".to_owned(),
            millis(lifetime).to_string(),
            list.max(1).to_string(),
            member(entry),
        ];
        parse_state(&self.run(connection, room, &args).await?)
    }

    pub(super) async fn refresh(
        &self,
        connection: ConnectionManager,
        room: &RoomName,
        entries: &[PresenceEntry],
        lifetime: std::time::Duration,
    ) -> Result<(), BrokerError> {
        let mut args = vec!["refresh".to_owned(), millis(lifetime).to_string()];
        args.extend(entries.iter().map(member));
        self.run(connection, room, &args).await.map(drop)
    }

    pub(super) async fn leave(
        &self,
        connection: ConnectionManager,
        room: &RoomName,
        entries: &[PresenceEntry],
    ) -> Result<(), BrokerError> {
        let mut args = vec!["leave".to_owned()];
        args.extend(entries.iter().map(member));
        self.run(connection, room, &args).await.map(drop)
    }

    pub(super) async fn sweep(&self, connection: ConnectionManager, room: &RoomName) -> Result<(), BrokerError> {
        self.run(connection, room, &["sweep".to_owned()]).await.map(drop)
    }

    pub(super) async fn members(
        &self,
        connection: ConnectionManager,
        room: &RoomName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PresenceState, BrokerError> {
        let args = [
            "members".to_owned(),
            after.unwrap_or("").to_owned(),
            limit.max(1).to_string(),
        ];
        parse_state(&self.run(connection, room, &args).await?)
    }

    pub(super) async fn changes_after(
        &self,
        connection: ConnectionManager,
        room: &RoomName,
        after: u64,
    ) -> Result<Option<Vec<PresenceChange>>, BrokerError> {
        let args = ["changes".to_owned(), after.to_string()];
        let reply = self.run(connection, room, &args).await?;
        let malformed = || BrokerError::Internal("unexpected presence change log from Redis".to_owned());
        let Value::Array(parts) = &reply else {
            return Err(malformed());
        };
        let [Value::Int(current), Value::Array(entries)] = parts.as_slice() else {
            return Err(malformed());
        };
        let current = u64::try_from(*current).unwrap_or(0);
        let mut changes = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::BulkString(payload) = entry else {
                return Err(malformed());
            };
            let Some((b'p', text)) = payload.split_first() else {
                return Err(malformed());
            };
            changes.push(parse_change(text).ok_or_else(malformed)?);
        }
        Ok(covers(after, current, &changes).then_some(changes))
    }

    pub(super) async fn signal(
        &self,
        mut connection: ConnectionManager,
        room: &RoomName,
        frame: &Bytes,
    ) -> Result<(), BrokerError> {
        let mut payload = Vec::with_capacity(frame.len() + 1);
        payload.push(b's');
        payload.extend_from_slice(frame);
        let mut command = redis::cmd(self.publish_command);
        command.arg(self.keys.channel(room)).arg(payload);
        bounded(command.query_async::<Value>(&mut connection)).await.map(drop)
    }
}

fn parse_state(reply: &Value) -> Result<PresenceState, BrokerError> {
    let malformed = || BrokerError::Internal("unexpected presence reply from Redis".to_owned());
    let Value::Array(parts) = reply else {
        return Err(malformed());
    };
    let [Value::Int(count), Value::Int(version), Value::Array(members)] = parts.as_slice() else {
        return Err(malformed());
    };
    let members = members
        .iter()
        .map(|member| match member {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| malformed()),
            _ => Err(malformed()),
        })
        .collect::<Result<_, _>>()?;
    Ok(PresenceState {
        count: u64::try_from(*count).unwrap_or(0),
        version: u64::try_from(*version).unwrap_or(0),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_payloads_are_told_apart_by_their_first_byte() {
        match classify(b"p17 - 3 ann lee") {
            LivePayload::Presence(change) => assert_eq!(
                change,
                PresenceChange {
                    version: 17,
                    user: Some("ann lee".to_owned()),
                    joined: false,
                    count: 3
                }
            ),
            _ => panic!("not a presence change"),
        }
        match classify(b"p2 + 1 ") {
            LivePayload::Presence(change) => assert_eq!((change.user, change.joined), (None, true)),
            _ => panic!("not a presence change"),
        }
        assert!(matches!(classify(b"p2 * 1 x"), LivePayload::Unreadable));
        assert!(matches!(classify(b"s{\"type\":\"signal\"}"), LivePayload::Signal(frame) if frame.starts_with(b"{")));
        assert!(matches!(classify(b"{\"type\":\"message\"}"), LivePayload::Message(_)));
        assert!(matches!(classify(b"00-abc\n{}"), LivePayload::Message(_)));
    }
}
