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

/// The binary under test: `target/release/chat-relay` when present, else
/// the one cargo built for this test run.
pub fn relay_binary() -> PathBuf {
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
        let mut command = Command::new(relay_binary());
        for (name, _) in std::env::vars() {
            if name.starts_with("RELAY_") || name == "REDIS_URL" {
                command.env_remove(name);
            }
        }
        command
            .env("REDIS_URL", redis_url)
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
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(listen) = entry["listen"].as_str() {
                    break listen.to_owned();
                }
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
