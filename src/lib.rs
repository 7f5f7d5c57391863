//! chat-relay: a stateless, horizontally scalable chat relay.
//!
//! Map of the crate (dependencies point inward: `http` and `session` use
//! `broker` and `protocol`; `broker` and `protocol` never import axum):
//! - [`config`]: settings from flags and environment, validated, no I/O.
//! - [`protocol`]: wire types, ids, room names, frame decoding and encoding.
//! - [`broker`]: the [`broker::Broker`] seam, the embedded memory broker and
//!   the Redis broker.
//! - [`session`]: room hub (fan-out, live-feed repair), resume, queues,
//!   rate limits, per-connection frame handling.
//! - [`http`]: the axum router: WebSocket, SSE, REST, health, metrics.
//! - [`auth`]: credentials to identity and room grants.
//! - [`node`]: what a node shares between connections.
//! - [`telemetry`]: logging set-up and metrics.
//! - [`tasks`]: every background task, owned, stoppable, watched for panics.
//! - [`shutdown`]: signal handling, drain, the running node.

#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod node;
pub mod protocol;
pub mod session;
pub mod shutdown;
pub mod stomp;
pub mod tasks;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, JwtKey, JwtVerifier};
use crate::broker::{Broker, MemoryBroker, RedisBroker, RetentionSettings};
use crate::config::{JwtKeySource, Settings};
use crate::node::Node;
pub use crate::shutdown::RunningNode;
use crate::tasks::NodeTasks;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address} (RELAY_LISTEN): {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The configured broker cannot be used.
    #[error("{0}")]
    Broker(String),
    /// The authentication settings cannot be used.
    #[error("{0}")]
    Auth(String),
}

async fn build_broker(settings: &Settings, tasks: &Arc<NodeTasks>) -> Result<Arc<dyn Broker>, StartError> {
    let retention = RetentionSettings {
        history_maxlen: settings.history_maxlen,
        history_ttl: settings.history_ttl,
        idempotency_ttl: settings.idempotency_ttl,
        replicas_acked: settings.redis_min_replicas_acked,
    };
    match &settings.redis_url {
        None => Ok(MemoryBroker::new(retention, tasks)),
        Some(url) => {
            let ca_pem = match &settings.redis_ca_file {
                None => None,
                Some(path) => Some(std::fs::read(path).map_err(|error| {
                    StartError::Broker(format!("cannot read RELAY_REDIS_CA_FILE {}: {error}", path.display()))
                })?),
            };
            let broker = RedisBroker::connect(
                url,
                ca_pem,
                &settings.key_prefix,
                retention,
                settings.redis_cluster,
                tasks,
            )
            .await
            .map_err(|error| StartError::Broker(error.to_string()))?;
            Ok(broker)
        }
    }
}

fn build_authenticator(settings: &Settings) -> Result<Authenticator, StartError> {
    let Some(jwt) = &settings.jwt else {
        return Ok(Authenticator::Open);
    };
    let pem;
    let key = match &jwt.key {
        JwtKeySource::Secret(secret) => JwtKey::Secret(secret),
        JwtKeySource::PublicKeyFile(path) => {
            pem = std::fs::read(path).map_err(|error| {
                StartError::Auth(format!(
                    "cannot read RELAY_JWT_PUBLIC_KEY_FILE {}: {error}",
                    path.display()
                ))
            })?;
            JwtKey::PublicKeyPem(&pem)
        }
    };
    let verifier = JwtVerifier::new(key, jwt.issuer.as_deref(), jwt.audience.as_deref(), jwt.leeway)
        .map_err(|error| StartError::Auth(error.to_string()))?;
    Ok(Authenticator::Jwt(Box::new(verifier)))
}

/// Says at start what is likely a mistake (see [`risky_settings`]).
fn warn_of_risky_settings(settings: &Settings, listening: SocketAddr) {
    for line in risky_settings(settings, listening) {
        tracing::warn!("{line}");
    }
}

/// What is likely a mistake in the settings of a node listening at
/// `listening`: a `RELAY_*` variable that names no setting (silently
/// ignored otherwise), and no authentication on an address others can
/// reach.
#[must_use]
pub fn risky_settings(settings: &Settings, listening: SocketAddr) -> Vec<String> {
    let mut lines: Vec<String> = settings
        .unknown_variables
        .iter()
        .map(|unknown| match &unknown.nearest {
            Some(nearest) => format!(
                "{} is not a setting and is ignored; did you mean {nearest}? (chat-relay --help lists them all)",
                unknown.name
            ),
            None => format!(
                "{} is not a setting and is ignored (chat-relay --help lists them all)",
                unknown.name
            ),
        })
        .collect();
    if settings.auth == config::AuthMode::None && !listening.ip().is_loopback() {
        lines.push(format!(
            "RELAY_AUTH=none on {listening}, an address others can reach: anyone who connects reads and writes every room under any name; set RELAY_AUTH=jwt, or listen on 127.0.0.1"
        ));
    }
    lines
}

/// Raises the soft descriptor limit to the hard one (each socket is one)
/// and returns it, when the platform tells.
fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::debug!(%error, "cannot read or raise the descriptor limit");
            None
        }
    }
}

/// Builds the node, binds the listener and starts serving in the background.
/// Logs the one start-up line.
///
/// # Errors
/// [`StartError`] when the broker or the listener cannot be set up.
pub async fn start(settings: Settings) -> Result<RunningNode, StartError> {
    let authenticator = build_authenticator(&settings)?;
    let tasks = NodeTasks::new();
    let broker = build_broker(&settings, &tasks).await?;
    let address = settings.listen;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { address, source })?;
    let node = Node::new(settings, broker, authenticator, tasks);
    tracing::info!(
        listen = %local_addr,
        broker = node.broker.kind(),
        auth = node.authenticator.mode(),
        node = %node.settings.node_id,
        version = env!("CARGO_PKG_VERSION"),
        "chat-relay listening"
    );
    warn_of_risky_settings(&node.settings, local_addr);
    let stop_server = CancellationToken::new();
    let descriptors = raise_descriptor_limit();
    let caps = http::listener::SocketCaps::new(
        node.settings.max_connections,
        node.settings.max_sockets_per_address,
        descriptors,
    );
    if caps.total < node.settings.max_connections {
        tracing::warn!(
            sockets = caps.total,
            descriptors = descriptors.unwrap_or(0),
            max_connections = node.settings.max_connections,
            "the descriptor limit holds fewer sockets than RELAY_MAX_CONNECTIONS; raise nofile (ulimit -n) or lower RELAY_MAX_CONNECTIONS"
        );
    }
    let serving = http::listener::Serving {
        router: http::router(node.clone()),
        header_timeout: node.settings.header_timeout,
        idle_timeout: node.settings.idle_timeout,
        caps,
    };
    let server = node.tasks.spawn(
        "http server",
        http::listener::serve(listener, serving, stop_server.clone()),
    );
    let sweeper_node = node.clone();
    node.tasks.spawn("rate limiter sweeper", async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticks.tick().await;
            sweeper_node.http_publish_limiter.forget_idle();
            sweeper_node.session.client_writes.forget_idle();
        }
    });
    Ok(RunningNode::new(local_addr, node, stop_server, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_authentication_beyond_loopback_is_warned_of() {
        let settings = config::settings_from(["chat-relay"]).expect("defaults are valid");
        let warned = |address: &str| {
            risky_settings(&settings, address.parse().unwrap())
                .iter()
                .any(|line| line.starts_with("RELAY_AUTH=none on"))
        };
        assert!(warned("0.0.0.0:8080"));
        assert!(warned("10.0.0.5:8080"));
        assert!(!warned("127.0.0.1:8080"));
        assert!(!warned("[::1]:8080"));
    }
}
