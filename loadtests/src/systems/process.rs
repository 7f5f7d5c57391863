//! Server processes the load generator starts, stops and measures: RSS and
//! CPU time read from `/proc`, for a process and its children (nginx's
//! workers).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A started server process, killed when dropped.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `command` with its output in `log` and waits until something
    /// accepts connections on `port` of 127.0.0.1.
    pub fn start(name: &str, command: Command, port: u16, log: &Path) -> anyhow::Result<Self> {
        Self::start_at(name, command, SocketAddr::from(([127, 0, 0, 1], port)), log)
    }

    /// As [`ServerProcess::start`], waiting for `address` (a loopback
    /// address, or one in a network namespace the caller created).
    pub fn start_at(name: &str, mut command: Command, address: SocketAddr, log: &Path) -> anyhow::Result<Self> {
        let output = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let mut process = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err() {
            if let Some(status) = process.child.try_wait()? {
                bail!("{name} exited ({status}) before listening; see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {address} within 30 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the process and its descendants (nginx's workers too),
    /// as a crash or an evicted container.
    pub fn kill(&mut self) {
        for pid in self.family().into_iter().rev() {
            // SAFETY: kill(2) with a pid read from /proc and a valid signal.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }

    /// Sends `signal` to the process alone (SIGTERM to drain, SIGSTOP and
    /// SIGCONT to freeze and thaw).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Whether the process has exited (and is reaped).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// This process and its descendants.
    fn family(&self) -> Vec<u32> {
        let mut family = vec![self.pid()];
        let mut index = 0;
        while index < family.len() {
            let parent = family[index];
            if let Ok(children) = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
                family.extend(children.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()));
            }
            index += 1;
        }
        family
    }

    /// Resident memory of the process and its descendants, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.family().into_iter().map(rss_of).sum()
    }

    /// CPU time of the process and its descendants, user and system apart.
    pub fn cpu_times(&self) -> CpuTimes {
        self.family().into_iter().map(cpu_of).sum()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // nginx's master takes its workers with it on SIGTERM; ask first.
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// CPU seconds spent in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    /// This process's own (the load generator's, every thread).
    pub fn of_this_process() -> Self {
        cpu_of(std::process::id())
    }

    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;

    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl std::iter::Sum for CpuTimes {
    fn sum<I: Iterator<Item = CpuTimes>>(iter: I) -> Self {
        iter.fold(CpuTimes::default(), |sum, times| CpuTimes {
            user: sum.user + times.user,
            system: sum.system + times.system,
        })
    }
}

fn cpu_of(pid: u32) -> CpuTimes {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return CpuTimes::default();
    };
    // Fields after the command name (which may hold spaces) start at state.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return CpuTimes::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after state.
    #[allow(clippy::cast_precision_loss)]
    CpuTimes {
        user: ticks(11) as f64 / clock_ticks_per_second(),
        system: ticks(12) as f64 / clock_ticks_per_second(),
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
