//! A Redis server per test, started with testcontainers from the image named
//! by `RELAY_TEST_REDIS_IMAGE` (default `redis:7`; `scripts/test` builds a
//! local one from Debian's redis-server when no registry is reachable). The
//! container shares the host network and Redis binds 127.0.0.1 only, so
//! nothing listens beyond loopback. Dropping it removes the container.

use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// Default image when `RELAY_TEST_REDIS_IMAGE` is unset.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7";

pub struct TestRedis {
    pub container: ContainerAsync<GenericImage>,
    pub port: u16,
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl TestRedis {
    pub async fn start() -> Self {
        let image = std::env::var("RELAY_TEST_REDIS_IMAGE").unwrap_or_else(|_| DEFAULT_REDIS_IMAGE.to_owned());
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        let port = free_loopback_port();
        let container = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_network("host")
            .with_cmd(["redis-server", "--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start Redis from image {image}: {error}. The Redis tests need a Docker engine and that image: \
                     run scripts/test (it builds one offline), or set RELAY_TEST_REDIS_IMAGE"
                )
            });
        Self { container, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain client for test-side commands (FLUSHALL, CLIENT KILL, ...).
    pub async fn command_connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("test connection to Redis")
    }
}
