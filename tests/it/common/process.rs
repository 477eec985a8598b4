//! `ServerProcess`: the real `colloquy` binary as a child process, for tests of several
//! processes sharing one Postgres and one Redis: streams that cross processes, a crash
//! (SIGKILL), a graceful stop (SIGTERM).
//!
//! A process runs over the database of a `TestApp` (which creates it and drops it at the end,
//! and whose helpers read it), with a clean environment: `PATH`, `HOME` and the settings of
//! `test_env`, nothing from the developer's shell or a `.env` file. The last lines of its
//! output are kept and printed when a test panics.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Client, test_env};

/// How many lines of a process's output are kept for failure messages.
const KEPT_LINES: usize = 500;
/// How long a process may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGKILL, and after SIGTERM (its shutdown grace
/// covers open connections and then running generations: up to twice `SHUTDOWN_GRACE_SECS`).
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `colloquy serve`; its client (`addr`, `url`, `gql_as`, `register`, ...) through
/// `Deref`. Dropping it kills the process.
pub struct ServerProcess {
    api: Client,
    child: Child,
    output: Arc<Mutex<Output>>,
    readers: Vec<JoinHandle<()>>,
    /// The logs are in a panic message already: `Drop` need not print them.
    logs_shown: bool,
}

/// What a process printed: its last lines, and the address it listens on once it said so.
#[derive(Default)]
struct Output {
    lines: VecDeque<String>,
    addr: Option<SocketAddr>,
}

impl Output {
    fn push(&mut self, line: String) {
        if self.addr.is_none() {
            self.addr = listening_addr(&line);
        }
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// The address in the line `src/main.rs` logs once the listener is bound.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    line.split("Colloquy listening on http://")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads `pipe` line by line into `output` on a thread of its own (it outlives no process:
/// the pipe ends when the process does).
fn keep(
    pipe: impl Read + Send + 'static,
    tag: &'static str,
    output: &Arc<Mutex<Output>>,
) -> JoinHandle<()> {
    let output = output.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{tag}{text}"));
            line.clear();
        }
    })
}

impl ServerProcess {
    /// Starts `colloquy serve` over the database `db_name` with the settings of `test_env`
    /// plus `overrides`, and waits until it listens; panics with its output if it exits or
    /// is not listening within 30 s.
    pub async fn start(db_name: &str, overrides: &[(&str, &str)]) -> ServerProcess {
        let mut vars = test_env(db_name, overrides);
        for (key, value) in [
            ("BIND_ADDR", "127.0.0.1:0"),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
        ] {
            vars.entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
        }
        // Plain text, for people reading failures, unless the test asks for JSON.
        if !overrides.iter().any(|(key, _)| *key == "LOG_FORMAT") {
            vars.remove("LOG_FORMAT");
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_colloquy"));
        command.arg("serve").env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        let mut child = command
            .envs(&vars)
            // The binary reads a `.env` from its working directory: none here.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn colloquy");
        let output = Arc::new(Mutex::new(Output::default()));
        let readers = vec![
            keep(child.stdout.take().expect("stdout"), "", &output),
            keep(child.stderr.take().expect("stderr"), "stderr: ", &output),
        ];
        let mut process = ServerProcess {
            api: Client::new(SocketAddr::from(([127, 0, 0, 1], 0))),
            child,
            output,
            readers,
            logs_shown: false,
        };
        let started = Instant::now();
        loop {
            let listening = process.output().addr;
            if let Some(addr) = listening {
                process.api = Client::new(addr);
                return process;
            }
            if let Some(status) = process.child.try_wait().expect("try_wait") {
                process.join_readers();
                process.logs_shown = true;
                panic!(
                    "colloquy exited ({status}) before listening:\n{}",
                    process.logs()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                process.stop_now();
                process.logs_shown = true;
                panic!(
                    "colloquy did not listen within {START_TIMEOUT:?}:\n{}",
                    process.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the process printed (stderr lines marked), one a line.
    pub fn logs(&self) -> String {
        Vec::from(self.output().lines.clone()).join("\n")
    }

    /// A crash: SIGKILL, no shutdown path at all; waits until the process is gone.
    pub async fn kill(&mut self) {
        // An error means it has exited already.
        let _ = self.child.kill();
        self.wait_exit(KILL_TIMEOUT, "SIGKILL").await;
    }

    /// A graceful stop: SIGTERM, then waits for the exit (panics after 30 s with the logs).
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return status; // reaped already: its pid may belong to another process now
        }
        // The dev-dependencies have neither libc nor nix: kill(1) sends the signal.
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
        self.wait_exit(TERMINATE_TIMEOUT, "SIGTERM").await
    }

    async fn wait_exit(&mut self, limit: Duration, after: &str) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_readers();
                return status;
            }
            if started.elapsed() > limit {
                self.stop_now();
                self.logs_shown = true;
                panic!(
                    "colloquy {} did not exit within {limit:?} of {after}:\n{}",
                    self.pid(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn output(&self) -> std::sync::MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills and reaps the process, blocking (SIGKILL is immediate), and reads its last output.
    fn stop_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }

    /// Waits for the readers to see the end of the output (the process has exited).
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl std::ops::Deref for ServerProcess {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.api
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop_now();
        if std::thread::panicking() && !self.logs_shown {
            eprintln!(
                "---- colloquy pid {} at {}: last {KEPT_LINES} lines at most ----\n{}\n---- end of colloquy pid {} ----",
                self.pid(),
                self.addr,
                self.logs(),
                self.pid()
            );
        }
    }
}
