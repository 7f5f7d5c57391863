//! Settings: every one an environment variable and the same-named long flag
//! (flags win), parsed by clap and validated into [`Settings`] before any
//! port is bound. No I/O happens here.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every room is open; `from` is the `user` query parameter.
    None,
    /// `Authorization: Bearer <JWT>` or `access_token` required.
    Jwt,
}

/// chat-relay: a stateless chat relay. Live delivery over Pub/Sub, exact
/// resume from a per-room history stream.
///
/// Every setting is an environment variable and the same-named flag; flags
/// win. Without REDIS_URL the relay runs on an embedded memory broker.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-relay",
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = "Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (http:// address of a local collector) and the other\nstandard OTEL_* variables to export OpenTelemetry traces over OTLP/HTTP; see docs/operations.md."
)]
pub struct Cli {
    /// HTTP and WebSocket listen address (port 0 picks a free port, logged at start)
    #[arg(long, env = "RELAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// redis:// or rediss:// URL of the Redis or Valkey server; unset: embedded memory broker
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Treat REDIS_URL as a seed node of a Redis Cluster (sharded Pub/Sub)
    #[arg(long, env = "RELAY_REDIS_CLUSTER", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: bool,

    /// Acknowledge a publish only after WAIT saw this many replicas take it (a Redis with replicas, or a Cluster); not met within a second: unavailable with stored unknown
    #[arg(long, env = "RELAY_REDIS_MIN_REPLICAS_ACKED", default_value_t = 0)]
    pub redis_min_replicas_acked: u32,

    /// PEM file of the CA that signed the Redis server certificate, for rediss:// with a private CA [default: the public web roots]
    #[arg(long, env = "RELAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Node id shown in welcome frames, logs and metrics [default: host name + random suffix]
    #[arg(long, env = "RELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Prefix of every Redis key and channel
    #[arg(long, env = "RELAY_KEY_PREFIX", default_value = "relay")]
    pub key_prefix: String,

    /// Messages kept per room (approximate trimming)
    #[arg(long, env = "RELAY_HISTORY_MAXLEN", default_value_t = 10_000)]
    pub history_maxlen: u64,

    /// A room's history expires this many seconds after its last message
    #[arg(long, env = "RELAY_HISTORY_TTL_SECS", default_value_t = 604_800)]
    pub history_ttl_secs: u64,

    /// Most messages sent on one resume or one history page
    #[arg(long, env = "RELAY_MAX_REPLAY", default_value_t = 1000)]
    pub max_replay: usize,

    /// Largest message body, serialized, in bytes
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Hard limit of one WebSocket frame from a client, in bytes; larger closes with 1009 [default: twice max-message-bytes, at least max-message-bytes + 4096]
    #[arg(long, env = "RELAY_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,

    /// Publishes per second per connection (burst twice that)
    #[arg(long, env = "RELAY_PUBLISH_RATE", default_value_t = 50)]
    pub publish_rate: u32,

    /// Seconds a cmid (client message id) is remembered per room
    #[arg(long, env = "RELAY_IDEMPOTENCY_TTL_SECS", default_value_t = 600)]
    pub idempotency_ttl_secs: u64,

    /// Frames queued per connection before it is closed as a slow consumer (4000)
    #[arg(long, env = "RELAY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Bytes of messages queued per connection before it is closed as a slow consumer (4000); at least max-message-bytes + 4096 [default: 4194304, or four messages of max-message-bytes when more]
    #[arg(long, env = "RELAY_OUTBOUND_QUEUE_BYTES")]
    pub outbound_queue_bytes: Option<usize>,

    /// Most bytes of messages sent on one resume or one history page (a longer replay counts as one past max-replay; a page ends early); at least max-message-bytes + 4096 [default: 4194304, or four messages of max-message-bytes when more]
    #[arg(long, env = "RELAY_MAX_REPLAY_BYTES")]
    pub max_replay_bytes: Option<usize>,

    /// Bytes of history a node holds at once for replays and history pages between their read and the socket; past it a read waits, then is refused [default: 64 x max-replay-bytes]
    #[arg(long, env = "RELAY_REPLAY_MEMORY_BYTES")]
    pub replay_memory_bytes: Option<usize>,

    /// Subscriptions per connection, on every transport; past it a subscribe is refused with too_many_subscriptions
    #[arg(long, env = "RELAY_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,

    /// Publishes and signals per second per client (token subject, or address without authentication) across all its connections and HTTP, burst twice that [default: twice publish-rate]
    #[arg(long, env = "RELAY_CLIENT_PUBLISH_RATE")]
    pub client_publish_rate: Option<u32>,

    /// Bytes of bodies per second per client across all its connections and HTTP, burst twice that [default: publish-rate x max-message-bytes / 2]
    #[arg(long, env = "RELAY_CLIENT_PUBLISH_BYTES")]
    pub client_publish_bytes: Option<u64>,

    /// Seconds a new connection has to send a whole request (or upgrade, or STOMP CONNECT); also how long a request's headers may take
    #[arg(long, env = "RELAY_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds an HTTP connection may send and receive nothing before it is closed (WebSockets are kept alive by pings, SSE by its comments); more than sse-keepalive-secs
    #[arg(long, env = "RELAY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Most open sockets from one client address, counted from the first byte, whatever they carry (0 = no cap; set 0 behind a load balancer whose few addresses carry every client)
    #[arg(long, env = "RELAY_MAX_SOCKETS_PER_ADDRESS", default_value_t = 1000)]
    pub max_sockets_per_address: usize,

    /// Invalid frames a connection may send per minute before it is closed with 1008
    #[arg(long, env = "RELAY_INVALID_FRAME_LIMIT", default_value_t = 20)]
    pub invalid_frame_limit: u32,

    /// WebSocket ping interval in seconds; two unanswered pings close the connection
    #[arg(long, env = "RELAY_PING_SECS", default_value_t = 25)]
    pub ping_secs: u64,

    /// Seconds between SSE keep-alive comment lines
    #[arg(long, env = "RELAY_SSE_KEEPALIVE_SECS", default_value_t = 15)]
    pub sse_keepalive_secs: u64,

    /// Seconds a killed node's presence members stay listed
    #[arg(long, env = "RELAY_PRESENCE_TTL_SECS", default_value_t = 45)]
    pub presence_ttl_secs: u64,

    /// On SIGTERM, seconds over which clients are told to reconnect
    #[arg(long, env = "RELAY_DRAIN_SECS", default_value_t = 8)]
    pub drain_secs: u64,

    /// none or jwt [default: none with the memory broker, jwt with REDIS_URL]
    #[arg(long, env = "RELAY_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// HS256 secret for RELAY_AUTH=jwt
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file (RS256 or ES256) for RELAY_AUTH=jwt
    #[arg(long, env = "RELAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Required `iss` claim, checked when set
    #[arg(long, env = "RELAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, checked when set
    #[arg(long, env = "RELAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Seconds of clock skew allowed when checking exp and nbf
    #[arg(long, env = "RELAY_JWT_LEEWAY_SECS", default_value_t = 10)]
    pub jwt_leeway_secs: u64,

    /// Most WebSocket and SSE connections this node accepts; past it upgrades get 503 so a load balancer retries elsewhere
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most concurrent connections per client (token subject, or address without auth); past it 429 (0 = no cap)
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 100)]
    pub max_connections_per_client: usize,

    /// Comma-separated origins allowed to open WebSockets and granted CORS; * allows any
    #[arg(long, env = "RELAY_ALLOWED_ORIGINS", default_value = "*")]
    pub allowed_origins: String,

    /// Comma-separated paths that also serve STOMP over WebSocket and SockJS (as Spring's withSockJS lays them out), besides /v1/stomp
    #[arg(long, env = "RELAY_STOMP_ENDPOINTS", default_value = "")]
    pub stomp_endpoints: String,

    /// STOMP application destinations and the rooms their SENDs go to, built from body fields: destination=room-template pairs, comma-separated (e.g. /app/chat/message=chat.room.{roomId})
    #[arg(long, env = "RELAY_STOMP_APP_ROUTES", default_value = "")]
    pub stomp_app_routes: String,

    /// Log format [default: pretty on a terminal, else json]; level from RUST_LOG
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The default of `RELAY_OUTBOUND_QUEUE_BYTES` and `RELAY_MAX_REPLAY_BYTES`
/// (4 MiB), unless four messages of `RELAY_MAX_MESSAGE_BYTES` are more.
const DEFAULT_QUEUE_BYTES: usize = 4 << 20;

/// Full replays the default `RELAY_REPLAY_MEMORY_BYTES` holds (256 MiB).
const DEFAULT_REPLAYS_IN_MEMORY: usize = 64;

/// Which origins may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Any origin.
    Any,
    /// Only these (exact `scheme://host[:port]`).
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Whether a browser `Origin` may connect.
    #[must_use]
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)),
        }
    }
}

/// Validated settings; see [`Cli`] for each one's meaning.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub redis_url: Option<String>,
    pub redis_cluster: bool,
    pub redis_min_replicas_acked: u32,
    pub redis_ca_file: Option<std::path::PathBuf>,
    pub node_id: String,
    pub key_prefix: String,
    pub history_maxlen: u64,
    pub history_ttl: Duration,
    pub max_replay: usize,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub publish_rate: u32,
    pub idempotency_ttl: Duration,
    pub outbound_queue: usize,
    pub outbound_queue_bytes: usize,
    pub max_replay_bytes: usize,
    pub replay_memory_bytes: usize,
    pub max_subscriptions: usize,
    pub client_publish_rate: u32,
    pub client_publish_bytes: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_sockets_per_address: usize,
    pub invalid_frame_limit: u32,
    pub ping_interval: Duration,
    pub sse_keepalive: Duration,
    pub presence_ttl: Duration,
    pub drain: Duration,
    pub auth: AuthMode,
    pub jwt: Option<JwtSettings>,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub allowed_origins: AllowedOrigins,
    pub stomp_endpoints: Vec<String>,
    pub stomp_app_routes: crate::stomp::AppRoutes,
    pub log_format: Option<LogFormat>,
    /// `RELAY_*` variables of the environment that name no setting (each
    /// with the setting it most likely meant), to be warned of at start.
    pub unknown_variables: Vec<UnknownVariable>,
}

/// A `RELAY_*` variable that names no setting: most likely a misspelling,
/// silently ignored unless said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    /// The variable as set.
    pub name: String,
    /// The setting it most likely meant.
    pub nearest: Option<String>,
}

/// The `RELAY_*` variables among `names` that name no setting, each with
/// the nearest real name (by edit distance, when close enough to be a
/// slip). `RELAY_TEST_*` belongs to the test harness.
#[must_use]
pub fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<UnknownVariable> {
    let command = Cli::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    let mut unknown: Vec<UnknownVariable> = names
        .into_iter()
        .filter(|name| name.starts_with("RELAY_") && !name.starts_with("RELAY_TEST_"))
        .filter(|name| !known.contains(name))
        .map(|name| {
            let nearest = known
                .iter()
                .map(|known| (strsim::levenshtein(&name, known), known))
                .filter(|(distance, _)| *distance <= 4)
                .min()
                .map(|(_, known)| known.clone());
            UnknownVariable { name, nearest }
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// Where a JWT verifier gets its key; the file is read at start, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeySource {
    /// `RELAY_JWT_SECRET` (HS256).
    Secret(String),
    /// `RELAY_JWT_PUBLIC_KEY_FILE` (RS256 or ES256).
    PublicKeyFile(std::path::PathBuf),
}

/// Validated JWT settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    pub key: JwtKeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {variable} (--{flag}): {reason}")]
pub struct ConfigError {
    /// Environment variable name.
    pub variable: &'static str,
    /// Flag name without dashes.
    pub flag: &'static str,
    /// What is wrong and what to do.
    pub reason: String,
}

fn invalid(variable: &'static str, flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        flag,
        reason: reason.into(),
    }
}

fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
    value: T,
    min: T,
    variable: &'static str,
    flag: &'static str,
) -> Result<T, ConfigError> {
    if value < min {
        return Err(invalid(
            variable,
            flag,
            format!("{value} is too small; use at least {min}"),
        ));
    }
    Ok(value)
}

fn default_node_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(48)
        .collect();
    let host = if host.is_empty() { "relay".to_owned() } else { host };
    format!("{host}-{:04x}", fastrand::u16(..))
}

impl Cli {
    /// Checks every setting and fills derived defaults.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let history_maxlen = at_least(self.history_maxlen, 1, "RELAY_HISTORY_MAXLEN", "history-maxlen")?;
        let history_ttl_secs = at_least(self.history_ttl_secs, 1, "RELAY_HISTORY_TTL_SECS", "history-ttl-secs")?;
        let max_replay = at_least(self.max_replay, 1, "RELAY_MAX_REPLAY", "max-replay")?;
        let max_message_bytes = at_least(
            self.max_message_bytes,
            16,
            "RELAY_MAX_MESSAGE_BYTES",
            "max-message-bytes",
        )?;
        let max_frame_bytes = self
            .max_frame_bytes
            .unwrap_or(max_message_bytes.saturating_add(max_message_bytes.max(4096)));
        if max_frame_bytes < max_message_bytes.saturating_add(1024) {
            return Err(invalid(
                "RELAY_MAX_FRAME_BYTES",
                "max-frame-bytes",
                format!(
                    "{max_frame_bytes} leaves no room for a frame around a {max_message_bytes}-byte body; use at least max-message-bytes + 1024"
                ),
            ));
        }
        let publish_rate = at_least(self.publish_rate, 1, "RELAY_PUBLISH_RATE", "publish-rate")?;
        let idempotency_ttl_secs = at_least(
            self.idempotency_ttl_secs,
            1,
            "RELAY_IDEMPOTENCY_TTL_SECS",
            "idempotency-ttl-secs",
        )?;
        let outbound_queue = at_least(self.outbound_queue, 1, "RELAY_OUTBOUND_QUEUE", "outbound-queue")?;
        // One message (body and envelope) must always fit.
        let one_message = max_message_bytes.saturating_add(4096);
        let default_bytes = DEFAULT_QUEUE_BYTES.max(one_message.saturating_mul(4));
        let outbound_queue_bytes = at_least(
            self.outbound_queue_bytes.unwrap_or(default_bytes),
            one_message,
            "RELAY_OUTBOUND_QUEUE_BYTES",
            "outbound-queue-bytes",
        )?;
        let max_replay_bytes = at_least(
            self.max_replay_bytes.unwrap_or(default_bytes),
            one_message,
            "RELAY_MAX_REPLAY_BYTES",
            "max-replay-bytes",
        )?;
        let replay_memory_bytes = at_least(
            self.replay_memory_bytes
                .unwrap_or(max_replay_bytes.saturating_mul(DEFAULT_REPLAYS_IN_MEMORY)),
            max_replay_bytes,
            "RELAY_REPLAY_MEMORY_BYTES",
            "replay-memory-bytes",
        )?;
        let max_subscriptions = at_least(
            self.max_subscriptions,
            1,
            "RELAY_MAX_SUBSCRIPTIONS",
            "max-subscriptions",
        )?;
        let client_publish_rate = at_least(
            self.client_publish_rate.unwrap_or(publish_rate.saturating_mul(2)),
            1,
            "RELAY_CLIENT_PUBLISH_RATE",
            "client-publish-rate",
        )?;
        // Governor counts in u32: past 4 GB/s there is no difference.
        let derived_bytes =
            u64::from(publish_rate).saturating_mul(u64::try_from(max_message_bytes).unwrap_or(u64::MAX)) / 2;
        let client_publish_bytes = at_least(
            self.client_publish_bytes
                .unwrap_or(derived_bytes.max(u64::try_from(one_message).unwrap_or(u64::MAX))),
            u64::try_from(one_message).unwrap_or(u64::MAX),
            "RELAY_CLIENT_PUBLISH_BYTES",
            "client-publish-bytes",
        )?;
        let client_publish_bytes = u32::try_from(client_publish_bytes).unwrap_or(u32::MAX);
        let header_timeout_secs = at_least(
            self.header_timeout_secs,
            1,
            "RELAY_HEADER_TIMEOUT_SECS",
            "header-timeout-secs",
        )?;
        let invalid_frame_limit = at_least(
            self.invalid_frame_limit,
            1,
            "RELAY_INVALID_FRAME_LIMIT",
            "invalid-frame-limit",
        )?;
        let ping_secs = at_least(self.ping_secs, 1, "RELAY_PING_SECS", "ping-secs")?;
        let sse_keepalive_secs = at_least(
            self.sse_keepalive_secs,
            1,
            "RELAY_SSE_KEEPALIVE_SECS",
            "sse-keepalive-secs",
        )?;
        let idle_timeout_secs = at_least(
            self.idle_timeout_secs,
            sse_keepalive_secs.saturating_add(1),
            "RELAY_IDLE_TIMEOUT_SECS",
            "idle-timeout-secs",
        )?;
        let presence_ttl_secs = at_least(
            self.presence_ttl_secs,
            2,
            "RELAY_PRESENCE_TTL_SECS",
            "presence-ttl-secs",
        )?;
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "RELAY_KEY_PREFIX",
                "key-prefix",
                "must be non-empty, without braces or spaces",
            ));
        }
        let node_id = match self.node_id {
            Some(id) if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                return Err(invalid(
                    "RELAY_NODE_ID",
                    "node-id",
                    "use 1 to 64 printable characters without spaces",
                ));
            }
            Some(id) => id,
            None => default_node_id(),
        };
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid(
                "REDIS_URL",
                "redis-url",
                "must start with redis:// or rediss://",
            ));
        }
        let auth = match (self.auth, &self.redis_url) {
            (Some(mode), _) => mode,
            (None, None) => AuthMode::None,
            (None, Some(_)) => AuthMode::Jwt,
        };
        let jwt = match auth {
            AuthMode::None => None,
            AuthMode::Jwt => {
                let key = match (
                    self.jwt_secret.filter(|secret| !secret.is_empty()),
                    self.jwt_public_key_file,
                ) {
                    (Some(secret), None) if secret.len() >= 32 => JwtKeySource::Secret(secret),
                    (Some(_), None) => {
                        return Err(invalid(
                            "RELAY_JWT_SECRET",
                            "jwt-secret",
                            "is shorter than 32 bytes; use a long random secret (e.g. openssl rand -base64 48)",
                        ));
                    }
                    (None, Some(path)) => JwtKeySource::PublicKeyFile(path),
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "RELAY_JWT_SECRET",
                            "jwt-secret",
                            "and RELAY_JWT_PUBLIC_KEY_FILE are both set; the key pins the algorithm, so set exactly one",
                        ));
                    }
                    (None, None) => {
                        let reason = if self.redis_url.is_some() {
                            "is jwt (the default with REDIS_URL) but neither RELAY_JWT_SECRET nor RELAY_JWT_PUBLIC_KEY_FILE is set; set one, or RELAY_AUTH=none to run without authentication"
                        } else {
                            "is jwt but neither RELAY_JWT_SECRET nor RELAY_JWT_PUBLIC_KEY_FILE is set"
                        };
                        return Err(invalid("RELAY_AUTH", "auth", reason));
                    }
                };
                Some(JwtSettings {
                    key,
                    issuer: self.jwt_issuer.filter(|issuer| !issuer.is_empty()),
                    audience: self.jwt_audience.filter(|audience| !audience.is_empty()),
                    leeway: Duration::from_secs(self.jwt_leeway_secs),
                })
            }
        };
        let max_connections = at_least(self.max_connections, 1, "RELAY_MAX_CONNECTIONS", "max-connections")?;
        let allowed_origins = parse_origins(&self.allowed_origins)?;
        let stomp_endpoints = parse_stomp_endpoints(&self.stomp_endpoints)?;
        let stomp_app_routes = crate::stomp::AppRoutes::parse(&self.stomp_app_routes)
            .map_err(|message| invalid("RELAY_STOMP_APP_ROUTES", "stomp-app-routes", message))?;
        Ok(Settings {
            listen: self.listen,
            redis_url: self.redis_url,
            redis_cluster: self.redis_cluster,
            redis_min_replicas_acked: self.redis_min_replicas_acked,
            redis_ca_file: self.redis_ca_file,
            node_id,
            key_prefix: self.key_prefix,
            history_maxlen,
            history_ttl: Duration::from_secs(history_ttl_secs),
            max_replay,
            max_message_bytes,
            max_frame_bytes,
            publish_rate,
            idempotency_ttl: Duration::from_secs(idempotency_ttl_secs),
            outbound_queue,
            outbound_queue_bytes,
            max_replay_bytes,
            replay_memory_bytes,
            max_subscriptions,
            client_publish_rate,
            client_publish_bytes,
            header_timeout: Duration::from_secs(header_timeout_secs),
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            max_sockets_per_address: self.max_sockets_per_address,
            invalid_frame_limit,
            ping_interval: Duration::from_secs(ping_secs),
            sse_keepalive: Duration::from_secs(sse_keepalive_secs),
            presence_ttl: Duration::from_secs(presence_ttl_secs),
            drain: Duration::from_secs(self.drain_secs),
            auth,
            jwt,
            max_connections,
            max_connections_per_client: self.max_connections_per_client,
            allowed_origins,
            stomp_endpoints,
            stomp_app_routes,
            log_format: self.log_format,
            unknown_variables: Vec::new(),
        })
    }
}

fn parse_stomp_endpoints(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut endpoints: Vec<String> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let path = entry.trim_end_matches('/');
        let valid = path.starts_with('/')
            && path.len() > 1
            && !path.starts_with("/v1/")
            && !["/healthz", "/readyz", "/metrics"].contains(&path)
            && path
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte))
            && !path.contains("//")
            && !path.contains('{');
        if !valid {
            return Err(invalid(
                "RELAY_STOMP_ENDPOINTS",
                "stomp-endpoints",
                format!(
                    "{entry:?} is not a usable path; use paths such as /ws-stomp (letters, digits, / - _ . ~), outside /v1/ and the health endpoints"
                ),
            ));
        }
        if endpoints.iter().any(|known| known == path) {
            return Err(invalid(
                "RELAY_STOMP_ENDPOINTS",
                "stomp-endpoints",
                format!("{path:?} is listed twice"),
            ));
        }
        endpoints.push(path.to_owned());
    }
    Ok(endpoints)
}

fn parse_origins(text: &str) -> Result<AllowedOrigins, ConfigError> {
    let entries: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(invalid(
            "RELAY_ALLOWED_ORIGINS",
            "allowed-origins",
            "is empty; use * or a list such as https://app.example.com",
        ));
    }
    if entries.contains(&"*") {
        return Ok(AllowedOrigins::Any);
    }
    for entry in &entries {
        let valid = (entry.starts_with("https://") || entry.starts_with("http://"))
            && !entry.trim_end_matches('/').ends_with(':')
            && !entry[8..].contains('/');
        if !valid {
            return Err(invalid(
                "RELAY_ALLOWED_ORIGINS",
                "allowed-origins",
                format!("{entry:?} is not an origin; use scheme://host[:port] such as https://app.example.com"),
            ));
        }
    }
    Ok(AllowedOrigins::List(entries.into_iter().map(str::to_owned).collect()))
}

/// Parses the command line and environment into settings.
///
/// # Errors
/// A clap error for `--help` and `--version` (printed as clap formats them),
/// or one line naming the bad setting.
pub fn settings_from<I, T>(args: I) -> Result<Settings, SettingsFailure>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|error| match error.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
            SettingsFailure::Display(error.to_string())
        }
        _ => SettingsFailure::Invalid(one_line_clap_error(&error)),
    })?;
    let mut settings = cli
        .validate()
        .map_err(|error| SettingsFailure::Invalid(error.to_string()))?;
    settings.unknown_variables = unknown_variables(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()));
    Ok(settings)
}

/// Why settings could not be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsFailure {
    /// Help or version was asked for: print it and exit 0.
    Display(String),
    /// A setting is wrong: print this one line and exit non-zero.
    Invalid(String),
}

/// Turns clap's multi-line error into one line naming the variable and flag.
fn one_line_clap_error(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let argument = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(argument)) => Some(argument.clone()),
        _ => None,
    };
    let long = argument
        .as_deref()
        .and_then(|argument| argument.strip_prefix("--"))
        .map(|rest| rest.split([' ', '=']).next().unwrap_or(rest).to_owned());
    let variable = long.as_deref().and_then(|long| {
        Cli::command()
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    });
    let first_line = error
        .to_string()
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    match (variable, long) {
        (Some(variable), Some(long)) => {
            format!("invalid setting {variable} (--{long}): {first_line}")
        }
        _ => format!("{first_line}; see chat-relay --help"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, SettingsFailure> {
        settings_from(std::iter::once("chat-relay").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_operations_spec() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.history_maxlen, 10_000);
        assert_eq!(settings.max_replay, 1000);
        assert_eq!(settings.max_message_bytes, 65_536);
        assert_eq!(settings.max_frame_bytes, 131_072);
        assert_eq!(settings.publish_rate, 50);
        assert_eq!(settings.outbound_queue, 1024);
        assert_eq!(settings.max_subscriptions, 256);
        assert_eq!(settings.client_publish_rate, 100);
        assert_eq!(settings.client_publish_bytes, 50 * 65_536 / 2);
        let raised = parse(&["--publish-rate", "1000000"]).unwrap();
        assert_eq!(raised.client_publish_bytes, u32::MAX, "past u32, no difference");
        assert_eq!(settings.auth, AuthMode::None);
        assert_eq!(settings.allowed_origins, AllowedOrigins::Any);
    }

    #[test]
    fn a_bad_number_names_the_variable_in_one_line() {
        let SettingsFailure::Invalid(line) = parse(&["--history-maxlen", "lots"]).unwrap_err() else {
            panic!()
        };
        assert!(
            line.starts_with("invalid setting RELAY_HISTORY_MAXLEN (--history-maxlen)"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let SettingsFailure::Invalid(line) = parse(&["--max-replay", "0"]).unwrap_err() else {
            panic!()
        };
        assert!(line.contains("RELAY_MAX_REPLAY"), "{line}");
    }

    #[test]
    fn jwt_needs_exactly_one_long_enough_key() {
        let line = |args: &[&str]| match parse(args).unwrap_err() {
            SettingsFailure::Invalid(line) => line,
            SettingsFailure::Display(_) => panic!(),
        };
        assert!(line(&["--auth", "jwt"]).contains("RELAY_JWT_SECRET nor RELAY_JWT_PUBLIC_KEY_FILE"));
        assert!(line(&["--redis-url", "redis://127.0.0.1"]).contains("the default with REDIS_URL"));
        assert!(line(&["--auth", "jwt", "--jwt-secret", "short"]).contains("shorter than 32 bytes"));
        let both = [
            "--auth",
            "jwt",
            "--jwt-secret",
            &"s".repeat(40),
            "--jwt-public-key-file",
            "/k.pem",
        ];
        assert!(line(&both).contains("both set"));
        let settings = parse(&["--auth", "jwt", "--jwt-secret", &"s".repeat(40), "--jwt-issuer", "i"]).unwrap();
        let jwt = settings.jwt.unwrap();
        assert_eq!(jwt.issuer.as_deref(), Some("i"));
        assert_eq!(jwt.leeway, Duration::from_secs(10));
        assert!(
            parse(&["--redis-url", "redis://127.0.0.1", "--auth", "none"])
                .unwrap()
                .jwt
                .is_none()
        );
    }

    #[test]
    fn a_misspelled_variable_is_named_with_the_setting_it_meant() {
        let unknown = unknown_variables(
            [
                "RELAY_MAX_CONECTIONS",
                "RELAY_PUBLISH_RATE",
                "RELAY_SOMETHING_ELSE_ENTIRELY",
                "RELAY_TEST_BINARY",
                "HOME",
            ]
            .map(str::to_owned),
        );
        assert_eq!(
            unknown,
            [
                UnknownVariable {
                    name: "RELAY_MAX_CONECTIONS".to_owned(),
                    nearest: Some("RELAY_MAX_CONNECTIONS".to_owned()),
                },
                UnknownVariable {
                    name: "RELAY_SOMETHING_ELSE_ENTIRELY".to_owned(),
                    nearest: None,
                },
            ]
        );
    }

    #[test]
    fn origins_are_validated() {
        assert!(
            matches!(parse(&["--allowed-origins", "https://a.example, http://b.example:8080"]).unwrap().allowed_origins, AllowedOrigins::List(list) if list.len() == 2)
        );
        assert!(parse(&["--allowed-origins", "a.example"]).is_err());
    }
}
