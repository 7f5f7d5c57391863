//! Who a client is and which rooms it may use.
//!
//! Handlers never parse credentials themselves: they hand the bearer token
//! and query parameters to [`Authenticator::authenticate`] and get a typed
//! [`Identity`] back. With `RELAY_AUTH=none` every room is open and the
//! subject is the `user` query parameter; the JWT mode plugs in here.

use crate::protocol::RoomName;

/// Longest `user` query parameter accepted with `RELAY_AUTH=none`.
pub const MAX_USER_BYTES: usize = 128;

/// An authenticated (or, with `RELAY_AUTH=none`, self-declared) client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    subject: Option<String>,
    grants: Grants,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Grants {
    /// Every room, read and write.
    Everything,
}

impl Identity {
    /// The subject that becomes a message's `from`, or `None`.
    #[must_use]
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Whether the client may subscribe to (read) a room.
    #[must_use]
    pub fn may_subscribe(&self, _room: &RoomName) -> bool {
        match self.grants {
            Grants::Everything => true,
        }
    }

    /// Whether the client may publish to a room.
    #[must_use]
    pub fn may_publish(&self, _room: &RoomName) -> bool {
        match self.grants {
            Grants::Everything => true,
        }
    }
}

/// The credentials a request carried.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// The token of an `Authorization: Bearer` header.
    pub bearer: Option<&'a str>,
    /// The `access_token` query parameter.
    pub access_token: Option<&'a str>,
    /// The `user` query parameter.
    pub user: Option<&'a str>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The `user` parameter is unusable.
    #[error("the user parameter is {0} bytes; the limit is 128")]
    UserTooLong(usize),
}

/// Turns credentials into an [`Identity`].
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// `RELAY_AUTH=none`.
    Open,
}

impl Authenticator {
    /// Authenticates one request or connection.
    ///
    /// # Errors
    /// [`AuthError`] when the credentials are not acceptable.
    pub fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Identity, AuthError> {
        match self {
            Authenticator::Open => {
                let subject = credentials.user.filter(|user| !user.is_empty());
                if let Some(user) = subject {
                    if user.len() > MAX_USER_BYTES {
                        return Err(AuthError::UserTooLong(user.len()));
                    }
                }
                Ok(Identity {
                    subject: subject.map(str::to_owned),
                    grants: Grants::Everything,
                })
            }
        }
    }

    /// `none` or `jwt`, for the start-up line.
    #[must_use]
    pub fn mode(&self) -> &'static str {
        match self {
            Authenticator::Open => "none",
        }
    }
}
