//! Real child processes for cross-process tests.
//!
//! A test binary re-runs itself: the parent starts `current_exe() --exact <entry> --ignored
//! --nocapture` with `COURTEOUS_CHILD=<entry>` and its parameters in the environment. The entry is
//! an `#[ignore]`d test that does nothing unless that variable names it, so a plain `cargo test`
//! never runs child work by itself.

use std::process::{Child, Command, Stdio};

pub const CHILD_ENV: &str = "COURTEOUS_CHILD";

/// Whether this process was started as the child `entry`.
pub fn is_child(entry: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == entry)
}

/// Starts the child `entry` (the full test path, e.g. `sqlite::child_writer`).
pub fn spawn(entry: &str, env: &[(&str, String)]) -> Child {
    command(entry, env).spawn().expect("spawn child process")
}

/// Starts the child `entry` with a pipe to its stdin, for a child that takes commands.
pub fn spawn_interactive(entry: &str, env: &[(&str, String)]) -> Child {
    command(entry, env)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn child process")
}

fn command(entry: &str, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command
        .args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, entry)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Waits for a child and returns its stdout; panics with its output if it failed.
pub fn wait_ok(child: Child) -> String {
    let output = child.wait_with_output().expect("wait for child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

/// Reads a required parameter of a child.
pub fn param<T: std::str::FromStr>(name: &str) -> T {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("child parameter {name} missing"))
        .parse()
        .unwrap_or_else(|_| panic!("child parameter {name} malformed"))
}
