//! Relay nodes as real processes (the release binary when built, as
//! `scripts/test` does), listening on 127.0.0.1 with an ephemeral port.
//! Dropping a node kills it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub struct RelayProcess {
    child: Child,
    pub addr: String,
    pub node_id: String,
    /// Every line the node logged.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The binary under test: `RELAY_TEST_BINARY` when set (to run a test
/// against another build, an older one say), else
/// `target/release/chat-relay` when present, else the one cargo built for
/// this test run.
pub fn relay_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("RELAY_TEST_BINARY") {
        return PathBuf::from(binary);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let release = target.join("release").join("chat-relay");
    if release.exists() {
        release
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_chat-relay"))
    }
}

impl RelayProcess {
    pub fn spawn(redis_url: &str, node_id: &str, extra: &[(&str, &str)]) -> Self {
        Self::spawn_with(Some(redis_url), node_id, extra, None)
    }

    /// A node on `redis_url`, or on the embedded memory broker when `None`;
    /// with `memory_limit_kib`, its address space is capped (`ulimit -v`),
    /// as a container's memory limit caps it, so that an allocation past it
    /// aborts the process instead of swapping.
    pub fn spawn_with(
        redis_url: Option<&str>,
        node_id: &str,
        extra: &[(&str, &str)],
        memory_limit_kib: Option<u64>,
    ) -> Self {
        let mut command = match memory_limit_kib {
            None => Command::new(relay_binary()),
            Some(kib) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -v {kib} && exec \"$0\""))
                    .arg(relay_binary());
                shell
            }
        };
        for (name, _) in std::env::vars() {
            if name.starts_with("RELAY_") || name == "REDIS_URL" {
                command.env_remove(name);
            }
        }
        if let Some(redis_url) = redis_url {
            command.env("REDIS_URL", redis_url);
        }
        command
            .env("RELAY_AUTH", "none")
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_LOG_FORMAT", "json")
            .env("RELAY_NODE_ID", node_id)
            .env("RELAY_PUBLISH_RATE", "100000")
            // Every test client comes from 127.0.0.1.
            .env("RELAY_MAX_CONNECTIONS_PER_CLIENT", "0")
            .env("RUST_LOG", "info");
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chat-relay");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{node_id} exited before listening"))
                .expect("log line");
            log.lock().unwrap().push(line.clone());
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(listen) = entry["listen"].as_str()
            {
                break listen.to_owned();
            }
        };
        let name = node_id.to_owned();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("\"WARN\"") || line.contains("\"ERROR\"") {
                    eprintln!("[{name}] {line}");
                }
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            addr,
            node_id: node_id.to_owned(),
            log,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The file descriptors it holds now.
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// Log lines at WARN or ERROR so far.
    pub fn warnings(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("\"WARN\"") || line.contains("\"ERROR\""))
            .cloned()
            .collect()
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().expect("wait for the node");
        std::mem::forget(self);
        status
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill_hard();
    }
}
