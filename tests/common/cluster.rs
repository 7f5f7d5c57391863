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
        Self::start_with(1)
    }

    /// Three primaries and no replica (quicker, for tests that kill no
    /// primary).
    pub fn start_primaries_only() -> Self {
        Self::start_with(0)
    }

    /// One `redis-server` with cluster mode disabled, on a free port (for
    /// the start-up checks).
    pub fn single_server() -> Self {
        Self::single_server_with(&[])
    }

    /// [`Self::single_server`] with more `redis-server` arguments.
    pub fn single_server_with(extra: &[&str]) -> Self {
        let folder = std::env::temp_dir().join(format!("relay-single-{}-{}", std::process::id(), free_loopback_port()));
        std::fs::create_dir_all(&folder).unwrap();
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
            .arg("--dir")
            .arg(&folder)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        Self::wait_until(port, "PING", "PONG");
        Self {
            ports: vec![port],
            servers: vec![server],
            folder,
        }
    }

    fn start_with(replicas: usize) -> Self {
        let folder =
            std::env::temp_dir().join(format!("relay-cluster-{}-{}", std::process::id(), free_loopback_port()));
        std::fs::create_dir_all(&folder).unwrap();
        let mut cluster = Self {
            ports: Vec::new(),
            servers: Vec::new(),
            folder,
        };
        for _ in 0..3 * (1 + replicas) {
            let port = free_cluster_port();
            let server = cluster.spawn_cluster_server(port);
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
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
        // Every replica has its primary's data before a test fails one over.
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in &cluster.ports {
            loop {
                let replication = Self::cli(port, &["INFO", "replication"]);
                if replication.contains("role:master") || replication.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the replica on {port} never synced: {replication}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Starts a cluster-mode `redis-server` on `port`, its node file in
    /// the cluster's folder (so a restarted node rejoins as itself).
    fn spawn_cluster_server(&self, port: u16) -> Child {
        Command::new("redis-server")
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
            // Fail over quickly, and let any replica take over.
            .args([
                "--cluster-node-timeout",
                "2000",
                "--cluster-replica-validity-factor",
                "0",
            ])
            // A replica syncs at once, not after the default 5 s wait for
            // more replicas: a primary killed in those seconds would take
            // everything with it.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--cluster-config-file")
            .arg(self.folder.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&self.folder)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)")
    }

    /// Starts the killed server on `port` again: it rejoins the cluster
    /// (as a replica, once another node took its slots) and syncs.
    pub fn restart(&mut self, port: u16) {
        let index = self.ports.iter().position(|&known| known == port).unwrap();
        let _ = self.servers[index].kill();
        let _ = self.servers[index].wait();
        self.servers[index] = self.spawn_cluster_server(port);
        Self::wait_until(port, "PING", "PONG");
    }

    /// `redis://127.0.0.1:<port>` of the first node (a seed).
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// `redis-cli -p <port> <args>`, its standard output.
    pub fn cli(port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The port of the primary that serves `slot` now, asked of any node
    /// that answers.
    pub fn primary_of_slot(&self, slot: u16) -> u16 {
        self.try_primary_of_slot(slot)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// [`Self::primary_of_slot`], or `None` while none does (between a
    /// primary's death and its replica's promotion).
    pub fn try_primary_of_slot(&self, slot: u16) -> Option<u16> {
        for &port in &self.ports {
            for line in Self::cli(port, &["CLUSTER", "NODES"]).lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                for range in &fields[8..] {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>())
                        && (start..=end).contains(&slot)
                    {
                        let address = fields[1].split('@').next().unwrap();
                        return address.rsplit_once(':').unwrap().1.parse().ok();
                    }
                }
            }
        }
        None
    }

    /// The slot of a key, as the cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.ports
            .iter()
            .find_map(|&port| Self::cli(port, &["CLUSTER", "KEYSLOT", key]).trim().parse().ok())
            .expect("a node answers CLUSTER KEYSLOT")
    }

    /// Moves `slot` (and its keys) from the primary on `from` to the one on
    /// `to` by hand, as an operator resharding does: `SETSLOT IMPORTING`
    /// and `MIGRATING`, `MIGRATE` of its keys until none is left, then
    /// `SETSLOT NODE` on the destination, the source and every other
    /// node. Traffic on the slot goes on meanwhile.
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        let slot = slot.to_string();
        let (from_id, to_id) = (Self::node_id(from), Self::node_id(to));
        let ok = |port: u16, args: &[&str]| {
            let answer = Self::cli(port, args);
            assert!(
                answer.trim() == "OK" || answer.trim() == "NOKEY",
                "{args:?} on {port}: {answer}"
            );
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = Self::cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
        ok(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for &port in &self.ports {
            if port != from && port != to {
                let _ = Self::cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
    }

    /// The port of a replica of the primary on `primary`, waiting (at most
    /// 15 s) until gossip has told the primary of one: just after the
    /// cluster forms, a replica may not be listed yet.
    pub fn replica_of(primary: u16) -> u16 {
        let id = Self::node_id(primary);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for line in Self::cli(primary, &["CLUSTER", "NODES"]).lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() > 3 && fields[2].contains("slave") && fields[3] == id {
                    let address = fields[1].split('@').next().unwrap();
                    return address.rsplit_once(':').unwrap().1.parse().unwrap();
                }
            }
            assert!(Instant::now() < deadline, "the primary on {primary} has no replica");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server process listening on `port`.
    pub fn server(&mut self, port: u16) -> &mut Child {
        let index = self.ports.iter().position(|&known| known == port).unwrap();
        &mut self.servers[index]
    }

    /// The node id of the server on `port`.
    pub fn node_id(port: u16) -> String {
        Self::cli(port, &["CLUSTER", "MYID"]).trim().to_owned()
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

/// A free port whose cluster bus port (the port plus 10,000) is free too: a
/// node whose bus port is taken by another test's socket never starts.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_loopback_port();
        if port <= u16::MAX - 10_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}
