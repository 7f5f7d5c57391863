//! What the load generator's tests share: the relay binary they run and a
//! bounded run of `relay-load` itself.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn relay_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let release = target.join("release").join("chat-relay");
    assert!(
        release.exists(),
        "{} is missing: scripts/test builds it (cargo build --release -p chat-relay)",
        release.display()
    );
    release
}

/// Runs `relay-load` with `args` (and `--relay-binary`), killing it past
/// `limit`; gives its status and what it printed on stdout.
pub fn relay_load(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-load"))
        .args(args)
        .arg("--relay-binary")
        .arg(relay_binary())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start relay-load");
    // Read stdout as it comes, so a chatty run never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay-load {args:?} took over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (status, reader.join().unwrap())
}
