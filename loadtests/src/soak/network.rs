//! The soak's network, for partition faults: each node runs in a network
//! namespace of the run's own, joined to the host by a veth pair
//! (10.213.B.4i+1 on the host, 10.213.B.4i+2 in namespace i, B from the
//! run's pid), so that an iptables DROP inside it makes a partition that
//! drops packets instead of resetting them: between the node and Redis, or
//! between the clients and the node. The soak sends traffic only to those
//! addresses and to 127.0.0.1. Everything is removed when dropped, and
//! namespaces left by an earlier run that was killed are removed at the
//! next start.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const PREFIX: &str = "crsoak-";

/// Which packets a partition drops.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Between the node and Redis (`port` is Redis's).
    Redis { port: u16 },
    /// Between every client and the node (`port` is the node's).
    Clients { port: u16 },
}

pub struct Namespaces {
    names: Vec<String>,
    block: u8,
    ip: PathBuf,
}

impl Namespaces {
    /// Creates one namespace per node. Needs root and iproute2.
    pub fn create(nodes: usize) -> anyhow::Result<Self> {
        let ip = find_program("ip")?;
        find_program("iptables")?;
        remove_stale(&ip);
        let pid = std::process::id();
        let mut namespaces = Self {
            names: Vec::new(),
            block: u8::try_from(pid % 256).unwrap_or(0),
            ip,
        };
        for index in 0..nodes {
            let name = format!("{PREFIX}{pid}-{index}");
            namespaces.ip_command(&["netns", "add", &name])?;
            namespaces.names.push(name.clone());
            let host_side = format!("crs{pid}h{index}");
            let node_side = format!("crs{pid}n{index}");
            let host = format!("{}/30", namespaces.host_address(index));
            let node = format!("{}/30", namespaces.node_address(index));
            namespaces.ip_command(&["link", "add", &host_side, "type", "veth", "peer", "name", &node_side])?;
            namespaces.ip_command(&["link", "set", &node_side, "netns", &name])?;
            namespaces.ip_command(&["addr", "add", &host, "dev", &host_side])?;
            namespaces.ip_command(&["link", "set", &host_side, "up"])?;
            namespaces.ip_command(&["-n", &name, "addr", "add", &node, "dev", &node_side])?;
            namespaces.ip_command(&["-n", &name, "link", "set", &node_side, "up"])?;
            namespaces.ip_command(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(namespaces)
    }

    /// The host's end of node `index`'s veth (where it reaches Redis).
    pub fn host_address(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.block, u8::try_from(4 * index + 1).unwrap_or(1))
    }

    /// Node `index`'s address, inside its namespace.
    pub fn node_address(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.block, u8::try_from(4 * index + 2).unwrap_or(2))
    }

    /// `program` run inside node `index`'s namespace.
    pub fn command(&self, index: usize, program: &Path) -> Command {
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec", &self.names[index]]).arg(program);
        command
    }

    /// Starts (`on`) or ends a partition of node `index`.
    pub fn partition(&self, index: usize, cut: Cut, on: bool) -> anyhow::Result<()> {
        let action = if on { "-I" } else { "-D" };
        let host = self.host_address(index).to_string();
        let (port, rules): (u16, [[&str; 6]; 2]) = match cut {
            Cut::Redis { port } => (
                port,
                [
                    ["OUTPUT", "-p", "tcp", "-d", &host, "--dport"],
                    ["INPUT", "-p", "tcp", "-s", &host, "--sport"],
                ],
            ),
            Cut::Clients { port } => (
                port,
                [
                    ["INPUT", "-p", "tcp", "-m", "tcp", "--dport"],
                    ["OUTPUT", "-p", "tcp", "-m", "tcp", "--sport"],
                ],
            ),
        };
        let port = port.to_string();
        for rule in rules {
            let mut arguments = vec!["netns".to_owned(), "exec".to_owned(), self.names[index].clone()];
            arguments.extend(["iptables".to_owned(), action.to_owned()]);
            arguments.extend(rule.iter().map(|&word| word.to_owned()));
            arguments.extend([port.clone(), "-j".to_owned(), "DROP".to_owned()]);
            let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
            self.ip_command(&arguments)?;
        }
        Ok(())
    }

    fn ip_command(&self, arguments: &[&str]) -> anyhow::Result<()> {
        run(&self.ip, arguments)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair with it.
        for name in &self.names {
            let _ = run(&self.ip, &["netns", "del", name]);
        }
    }
}

fn run(program: &Path, arguments: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(arguments)
        .output()
        .with_context(|| format!("run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed: {} (partition faults need root, iproute2 and iptables: run as root, or leave partition-redis and partition-clients out of --faults)",
            program.display(),
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|folder| Path::new(folder).join(name))
        .find(|path| path.exists())
        .with_context(|| format!("{name} not found: partition faults need it (apt-get install iproute2 iptables)"))
}

/// Removes namespaces of earlier soaks whose process is gone.
fn remove_stale(ip: &Path) {
    let Ok(output) = Command::new(ip).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().unwrap_or("");
        if !Path::new("/proc").join(owner).exists() {
            let _ = run(ip, &["netns", "del", name]);
        }
    }
}
