//! Room names: 1 to 128 bytes of `A-Z a-z 0-9 . _ : @ = -`.
//!
//! A validated `RoomName` never needs escaping inside JSON, a Redis key or a
//! URL path, which is why frames can be composed around it by concatenation.

use std::fmt;
use std::sync::Arc;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 128;

/// A validated room name; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a text is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoomName {
    /// Empty name.
    #[error("room name is empty; use 1 to 128 characters of A-Z a-z 0-9 . _ : @ = -")]
    Empty,
    /// Over 128 bytes.
    #[error("room name is {0} bytes long; the limit is 128")]
    TooLong(usize),
    /// A character outside the allowed set.
    #[error("room name contains {0:?}; only A-Z a-z 0-9 . _ : @ = - are allowed")]
    BadCharacter(char),
}

fn is_room_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'@' | b'=' | b'-')
}

impl RoomName {
    /// Validates a room name.
    ///
    /// # Errors
    /// [`InvalidRoomName`] says which rule the text breaks.
    pub fn parse(text: &str) -> Result<Self, InvalidRoomName> {
        if text.is_empty() {
            return Err(InvalidRoomName::Empty);
        }
        if text.len() > MAX_ROOM_NAME_BYTES {
            return Err(InvalidRoomName::TooLong(text.len()));
        }
        if let Some(bad) = text.chars().find(|c| !c.is_ascii() || !is_room_name_byte(*c as u8)) {
            return Err(InvalidRoomName::BadCharacter(bad));
        }
        Ok(Self(Arc::from(text)))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let all = "AZaz09._:@=-";
        assert_eq!(RoomName::parse(all).unwrap().as_str(), all);
        assert!(RoomName::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(RoomName::parse(""), Err(InvalidRoomName::Empty));
        assert_eq!(RoomName::parse(&"a".repeat(129)), Err(InvalidRoomName::TooLong(129)));
        for bad in ["a b", "a/b", "a*", "é", "a\"b", "a\\b", "{x}", "a\n"] {
            assert!(
                matches!(RoomName::parse(bad), Err(InvalidRoomName::BadCharacter(_))),
                "{bad:?}"
            );
        }
    }
}
