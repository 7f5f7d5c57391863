//! Message ids: the `<ms>-<seq>` form of a Redis stream entry id.
//!
//! Ids are strictly increasing within a room. Clients store them and hand them
//! back; they never build one, so parsing is strict: two decimal numbers and a
//! dash, nothing else.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch: the clock of ids and `ts`.
#[must_use]
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The id of one message in a room's history stream.
///
/// Ordered like Redis orders stream ids: by milliseconds, then by sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId {
    /// Milliseconds part (wall clock of the broker when the id was made).
    pub ms: u64,
    /// Sequence within the same millisecond.
    pub seq: u64,
}

impl MessageId {
    /// `0-0`: the `prev` of the first message a room's history ever held.
    pub const ZERO: MessageId = MessageId { ms: 0, seq: 0 };

    /// Builds an id from its two parts.
    #[must_use]
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The id a broker assigns to the next entry, given the last one and the
    /// clock: the clock's millisecond if it moved forward, else one more in the
    /// last millisecond. This keeps ids strictly increasing when the wall
    /// clock steps back, exactly as Redis `XADD *` does.
    ///
    /// Returns `None` only when the id space is exhausted (`u64::MAX-u64::MAX`).
    #[must_use]
    pub fn next_after(last: MessageId, now_ms: u64) -> Option<MessageId> {
        if now_ms > last.ms {
            Some(MessageId::new(now_ms, 0))
        } else if let Some(seq) = last.seq.checked_add(1) {
            Some(MessageId::new(last.ms, seq))
        } else {
            last.ms.checked_add(1).map(|ms| MessageId::new(ms, 0))
        }
    }

    /// The smallest id strictly greater than this one.
    #[must_use]
    pub fn successor(self) -> Option<MessageId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(MessageId::new(self.ms, seq)),
            None => self.ms.checked_add(1).map(|ms| MessageId::new(ms, 0)),
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a text is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a message id; expected `<ms>-<seq>` as returned by the server, e.g. `1732400000123-0`")]
pub struct InvalidMessageId(pub String);

fn parse_decimal(part: &str) -> Option<u64> {
    // `u64::from_str` accepts a leading `+`; ids never carry one.
    if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

impl FromStr for MessageId {
    type Err = InvalidMessageId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMessageId(text.chars().take(64).collect());
        let (ms, seq) = text.split_once('-').ok_or_else(invalid)?;
        match (parse_decimal(ms), parse_decimal(seq)) {
            (Some(ms), Some(seq)) => Ok(MessageId { ms, seq }),
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_the_redis_form() {
        let id: MessageId = "1732400000123-7".parse().unwrap();
        assert_eq!(id, MessageId::new(1_732_400_000_123, 7));
        assert_eq!(id.to_string(), "1732400000123-7");
        assert_eq!("0-0".parse::<MessageId>().unwrap(), MessageId::ZERO);
    }

    #[test]
    fn rejects_anything_but_two_decimals_and_a_dash() {
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "1-2-3",
            "+1-2",
            "1-+2",
            "a-1",
            "1-a",
            " 1-2",
            "1-2 ",
            "1.5-2",
            "18446744073709551616-0",
            "0x1-0",
            "1_000-0",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn orders_by_milliseconds_then_sequence() {
        assert!(MessageId::new(1, 5) < MessageId::new(2, 0));
        assert!(MessageId::new(2, 0) < MessageId::new(2, 1));
    }

    #[test]
    fn next_after_stays_increasing_when_the_clock_steps_back() {
        let last = MessageId::new(1000, 3);
        assert_eq!(MessageId::next_after(last, 2000), Some(MessageId::new(2000, 0)));
        assert_eq!(MessageId::next_after(last, 1000), Some(MessageId::new(1000, 4)));
        assert_eq!(MessageId::next_after(last, 10), Some(MessageId::new(1000, 4)));
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(ms in any::<u64>(), seq in any::<u64>()) {
            let id = MessageId::new(ms, seq);
            prop_assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        }

        #[test]
        fn ids_from_any_clock_sequence_strictly_increase(
            clock in proptest::collection::vec(0u64..5_000, 1..200)
        ) {
            let mut last = MessageId::ZERO;
            for now in clock {
                let next = MessageId::next_after(last, now).unwrap();
                prop_assert!(next > last);
                last = next;
            }
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = text.parse::<MessageId>();
        }
    }
}
