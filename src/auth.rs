//! Who a client is and which rooms it may use.
//!
//! Handlers never parse credentials themselves: they hand the bearer token
//! and query parameters to [`Authenticator::authenticate`] and get a typed
//! [`Identity`] back. With `RELAY_AUTH=none` every room is open and the
//! subject is the `user` query parameter. With `RELAY_AUTH=jwt` a token is
//! required: its algorithm is pinned by the configured key (HS256 for a
//! secret; RS256 or ES256 for a PEM public key), so `alg: none` and HS/RS
//! confusion cannot pass; `sub` and `exp` are required, `nbf` is honoured,
//! `iss` and `aud` are checked when configured.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::RoomName;

/// Longest `user` query parameter accepted with `RELAY_AUTH=none`.
pub const MAX_USER_BYTES: usize = 128;

/// A room pattern of a token: a room name, a prefix ending in `*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    /// Every room.
    Any,
    /// Rooms whose name starts with this prefix.
    Prefix(String),
    /// Exactly this room.
    Exact(String),
}

impl RoomPattern {
    /// Parses a pattern; `None` when it cannot match any valid room.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if text == "*" {
            return Some(RoomPattern::Any);
        }
        match text.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') && (prefix.is_empty() || RoomName::parse(prefix).is_ok()) => {
                Some(RoomPattern::Prefix(prefix.to_owned()))
            }
            Some(_) => None,
            None => RoomName::parse(text)
                .ok()
                .map(|room| RoomPattern::Exact(room.as_str().to_owned())),
        }
    }

    /// Whether the pattern covers a room.
    #[must_use]
    pub fn matches(&self, room: &RoomName) -> bool {
        match self {
            RoomPattern::Any => true,
            RoomPattern::Prefix(prefix) => room.as_str().starts_with(prefix.as_str()),
            RoomPattern::Exact(name) => room.as_str() == name,
        }
    }
}

/// An authenticated (or, with `RELAY_AUTH=none`, self-declared) client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    subject: Option<String>,
    grants: Grants,
    expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Grants {
    /// Every room, read and write (`RELAY_AUTH=none`).
    Everything,
    /// A token's `rooms` (read and write) and `read` (read only).
    Patterns {
        write: Vec<RoomPattern>,
        read: Vec<RoomPattern>,
    },
}

impl Identity {
    /// A client not (yet) authenticated: no subject, no grant.
    #[must_use]
    pub fn anonymous() -> Self {
        Self {
            subject: None,
            grants: Grants::Patterns {
                write: Vec::new(),
                read: Vec::new(),
            },
            expires_at: None,
        }
    }

    /// The subject that becomes a message's `from`, or `None`.
    #[must_use]
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// When the token expires, in seconds since the Unix epoch.
    #[must_use]
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// The key of this client's shared budgets (connections, writes,
    /// history reads): the token's subject when a token proved it, else
    /// the address (a self-declared `user` proves nothing).
    #[must_use]
    pub fn client_key(&self, address: Option<std::net::IpAddr>) -> std::sync::Arc<str> {
        match (&self.grants, &self.subject, address) {
            (Grants::Patterns { .. }, Some(subject), _) => format!("sub:{subject}").into(),
            (_, _, Some(address)) => format!("ip:{address}").into(),
            _ => "unknown".into(),
        }
    }

    /// Whether the client may subscribe to (read) a room.
    #[must_use]
    pub fn may_subscribe(&self, room: &RoomName) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Patterns { write, read } => write.iter().chain(read).any(|pattern| pattern.matches(room)),
        }
    }

    /// Whether the client may publish to a room.
    #[must_use]
    pub fn may_publish(&self, room: &RoomName) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Patterns { write, .. } => write.iter().any(|pattern| pattern.matches(room)),
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

/// Why a request was not authenticated. Messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The `user` parameter is unusable.
    #[error("the user parameter is {0} bytes; the limit is 128")]
    UserTooLong(usize),
    /// The `user` parameter holds a control character.
    #[error("the user parameter holds a control character; use printable text")]
    UserNotPrintable,
    /// No token at all.
    #[error("a token is required: send Authorization: Bearer <JWT>, or access_token=<JWT> in the query")]
    MissingToken,
    /// The token expired.
    #[error("the token has expired; get a new one and connect (or refresh) again")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// Anything else wrong with the token.
    #[error("the token was refused: {0}")]
    Invalid(String),
}

/// Why the JWT settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Verifies tokens with one pinned algorithm.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Where a verifier's key comes from.
pub enum JwtKey<'a> {
    /// `RELAY_JWT_SECRET`: HS256.
    Secret(&'a str),
    /// `RELAY_JWT_PUBLIC_KEY_FILE` contents: RS256 or ES256, by key type.
    PublicKeyPem(&'a [u8]),
}

impl JwtVerifier {
    /// Builds a verifier.
    ///
    /// # Errors
    /// [`KeyError`] when the PEM is neither an RSA nor a P-256 public key.
    pub fn new(
        key: JwtKey<'_>,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: Duration,
    ) -> Result<Self, KeyError> {
        let (key, algorithm) = match key {
            JwtKey::Secret(secret) => (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256),
            JwtKey::PublicKeyPem(pem) => match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => (key, Algorithm::RS256),
                Err(_) => match DecodingKey::from_ec_pem(pem) {
                    Ok(key) => (key, Algorithm::ES256),
                    Err(error) => {
                        return Err(KeyError(format!(
                            "RELAY_JWT_PUBLIC_KEY_FILE is not an RSA or P-256 public key in PEM form ({error})"
                        )));
                    }
                },
            },
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked
        // when present: a token without the claim was not made for us.
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    /// Verifies a token and turns its claims into an identity.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        #[derive(Deserialize)]
        struct Claims {
            sub: String,
            exp: u64,
            #[serde(default)]
            rooms: Vec<String>,
            #[serde(default)]
            read: Vec<String>,
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (iss)".to_owned()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (aud)".to_owned()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".to_owned()),
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Invalid("algorithm not accepted".to_owned())
                }
                ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(format!("missing claim {claim}")),
                _ => AuthError::Invalid("malformed token".to_owned()),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_BYTES || claims.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "sub must be 1 to 128 bytes without control characters".to_owned(),
            ));
        }
        let patterns = |list: &[String], claim: &str| -> Result<Vec<RoomPattern>, AuthError> {
            list.iter()
                .map(|text| {
                    RoomPattern::parse(text)
                        .ok_or_else(|| AuthError::Invalid(format!("{claim} has an invalid room pattern {text:?}")))
                })
                .collect()
        };
        let grants = Grants::Patterns {
            write: patterns(&claims.rooms, "rooms")?,
            read: patterns(&claims.read, "read")?,
        };
        Ok(Identity {
            subject: Some(claims.sub),
            grants,
            expires_at: Some(claims.exp),
        })
    }

    /// The configured leeway, in seconds.
    #[must_use]
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
    }
}

/// Turns credentials into an [`Identity`].
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// `RELAY_AUTH=none`.
    Open,
    /// `RELAY_AUTH=jwt`.
    Jwt(Box<JwtVerifier>),
}

impl Authenticator {
    /// Authenticates one request or connection. A bearer header wins over
    /// the `access_token` parameter.
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
                    // It becomes `from` in every frame, and a header of
                    // line- and NUL-delimited protocols (STOMP).
                    if user.chars().any(char::is_control) {
                        return Err(AuthError::UserNotPrintable);
                    }
                }
                Ok(Identity {
                    subject: subject.map(str::to_owned),
                    grants: Grants::Everything,
                    expires_at: None,
                })
            }
            Authenticator::Jwt(verifier) => {
                let token = credentials
                    .bearer
                    .or(credentials.access_token)
                    .filter(|token| !token.is_empty());
                verifier.verify(token.ok_or(AuthError::MissingToken)?)
            }
        }
    }

    /// Authenticates a token sent in a `refresh` frame.
    ///
    /// # Errors
    /// [`AuthError`] when the token is not acceptable.
    pub fn refresh(&self, token: &str) -> Result<Identity, AuthError> {
        match self {
            Authenticator::Open => Err(AuthError::Invalid("this node runs without authentication".to_owned())),
            Authenticator::Jwt(verifier) => verifier.verify(token),
        }
    }

    /// `none` or `jwt`, for the start-up line.
    #[must_use]
    pub fn mode(&self) -> &'static str {
        match self {
            Authenticator::Open => "none",
            Authenticator::Jwt(_) => "jwt",
        }
    }
}

/// Seconds since the Unix epoch, now.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let team = RoomPattern::parse("team:*").unwrap();
        assert!(team.matches(&room("team:a")) && team.matches(&room("team:")));
        assert!(!team.matches(&room("team")), "team:* does not cover team");
        assert!(!team.matches(&room("teams:a")));
        assert!(RoomPattern::parse("*").unwrap().matches(&room("anything")));
        let exact = RoomPattern::parse("lobby").unwrap();
        assert!(exact.matches(&room("lobby")) && !exact.matches(&room("lobby2")));
        for bad in ["", "a*b*", "bad room", "x/*", "**"] {
            assert_eq!(RoomPattern::parse(bad), None, "{bad:?}");
        }
    }
}
