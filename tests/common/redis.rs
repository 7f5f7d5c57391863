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

/// A free port on 127.0.0.1.
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl TestRedis {
    pub async fn start() -> Self {
        let port = free_loopback_port();
        Self::start_with(port, &["--port", &port.to_string()], None).await
    }

    /// Redis that writes every command to its append-only file before it
    /// answers, so that a `kill -9` and a start ([`Self::kill_and_restart`])
    /// keep everything it acknowledged.
    pub async fn start_persistent() -> Self {
        let port = free_loopback_port();
        let args = [
            "--port",
            &port.to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ];
        Self::start_with(port, &args, None).await
    }

    /// SIGKILL, then the same server started again (its files kept).
    pub async fn kill_and_restart(&self, down: Duration) {
        self.container.stop_with_timeout(Some(0)).await.expect("kill Redis");
        tokio::time::sleep(down).await;
        self.container.start().await.expect("start Redis again");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "Redis came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Redis with TLS only, on a port it returns, using `server.pem`,
    /// `server.key` and `ca.pem` from `cert_dir`.
    pub async fn start_tls(cert_dir: &std::path::Path) -> Self {
        let port = free_loopback_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            "/certs/server.pem",
            "--tls-key-file",
            "/certs/server.key",
            "--tls-ca-cert-file",
            "/certs/ca.pem",
            "--tls-auth-clients",
            "no",
        ];
        Self::start_with(port, &args, Some(cert_dir)).await
    }

    async fn start_with(port: u16, args: &[&str], cert_dir: Option<&std::path::Path>) -> Self {
        let image = std::env::var("RELAY_TEST_REDIS_IMAGE").unwrap_or_else(|_| DEFAULT_REDIS_IMAGE.to_owned());
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        // The defaults first: a test's own arguments come later and win.
        let mut command = vec!["redis-server".to_owned()];
        command.extend(
            [
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]
            .map(str::to_owned),
        );
        command.extend(args.iter().map(|arg| (*arg).to_owned()));
        let mut request = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_network("host")
            .with_cmd(command)
            .with_startup_timeout(Duration::from_secs(60));
        if let Some(dir) = cert_dir {
            request = request.with_mount(testcontainers::core::Mount::bind_mount(dir.to_string_lossy(), "/certs"));
        }
        let container = request.start().await.unwrap_or_else(|error| {
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
