//! A real Redis Cluster per test: Debian's `redis-server` (the binary the
//! offline Redis image packs), 3 primaries and 3 replicas on free loopback
//! ports, joined by `redis-cli --cluster create`, with
//! `cluster-require-full-coverage no` (so a shard without a primary does
//! not stop the others). Dropping it kills every server and removes its
//! folder.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_loopback_port;

pub struct TestCluster {
    pub ports: Vec<u16>,
    servers: Vec<Child>,
    folder: PathBuf,
}

impl TestCluster {
    /// Starts the six servers and waits (at most 30 s) until the cluster
    /// reports `cluster_state:ok` on every node.
    pub fn start() -> Self {
        let folder =
            std::env::temp_dir().join(format!("relay-cluster-{}-{}", std::process::id(), free_loopback_port()));
        std::fs::create_dir_all(&folder).unwrap();
        let mut cluster = Self {
            ports: Vec::new(),
            servers: Vec::new(),
            folder,
        };
        for _ in 0..6 {
            let port = free_loopback_port();
            let server = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-require-full-coverage", "no"])
                .arg("--cluster-config-file")
                .arg(cluster.folder.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.folder)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (apt-get install redis-server)");
            cluster.ports.push(port);
            cluster.servers.push(server);
        }
        for &port in &cluster.ports {
            Self::wait_until(port, "PING", "PONG");
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for &port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        for &port in &cluster.ports {
            Self::wait_until(port, "CLUSTER INFO", "cluster_state:ok");
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of the first node (a seed).
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    fn wait_until(port: u16, command: &str, wanted: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(command.split(' '))
                .output()
                .expect("run redis-cli");
            if String::from_utf8_lossy(&output.stdout).contains(wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Redis on {port} never answered {command} with {wanted}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}
