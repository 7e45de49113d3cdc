//! The real `flashsale-server` binary as a child process, for the tests
//! that must kill it, signal it, limit it, or read what it writes.

#![allow(dead_code)]

pub mod nats;
pub mod storm;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest a server may take to exit once told to (or once it failed):
/// beyond it, the test reports a hang.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start a server process.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// Its data dir.
    pub data_dir: &'a Path,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Flags after `--data-dir`, `--listen`, `--shards 2 --demo`.
    pub args: &'a [&'a str],
    /// `FLASHSALE_ADMIN_PASSWORD` (the demo admin's password).
    pub admin_password: &'a str,
    /// `RUST_LOG`.
    pub rust_log: &'a str,
    /// Its stderr is the test's when true, else discarded.
    pub show_stderr: bool,
    /// `RLIMIT_FSIZE` in bytes (rounded down to 512-byte blocks), with
    /// `SIGXFSZ` ignored: a write past it fails with `EFBIG` instead of
    /// killing the process. `None`: no limit.
    pub file_size_limit: Option<u64>,
    /// Extra environment variables (e.g. `FLASHSALE_CRASH_AT`).
    pub env: &'a [(&'a str, &'a str)],
}

/// A `flashsale-server` child process.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary on `data_dir` at `addr` with `--shards 2 --demo`,
    /// then `args`, the admin password `admin_password` and `RUST_LOG=rust_log`;
    /// waits until it prints that it listens. Its stderr is the test's when
    /// `show_stderr`, else discarded.
    pub async fn start(
        data_dir: &Path,
        addr: SocketAddr,
        args: &[&str],
        admin_password: &str,
        rust_log: &str,
        show_stderr: bool,
    ) -> Self {
        Self::launch(&Launch {
            data_dir,
            addr,
            args,
            admin_password,
            rust_log,
            show_stderr,
            file_size_limit: None,
            env: &[],
        })
        .await
    }

    /// Starts a server as `launch` says and waits until it prints that it
    /// listens.
    pub async fn launch(launch: &Launch<'_>) -> Self {
        let binary = env!("CARGO_BIN_EXE_flashsale-server");
        let mut command = match launch.file_size_limit {
            None => Command::new(binary),
            Some(bytes) => {
                // An ignored signal stays ignored across exec, so the server
                // sees EFBIG from write() rather than dying of SIGXFSZ.
                // `ulimit -f` counts 512-byte blocks (POSIX).
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(r#"trap '' XFSZ; ulimit -f "$0" && exec "$@""#)
                    .arg((bytes / 512).to_string())
                    .arg(binary);
                command
            }
        };
        command
            .arg("--data-dir")
            .arg(launch.data_dir)
            .args([
                "--listen",
                &launch.addr.to_string(),
                "--shards",
                "2",
                "--demo",
            ])
            .args(launch.args)
            .env("FLASHSALE_ADMIN_PASSWORD", launch.admin_password)
            .env("RUST_LOG", launch.rust_log)
            .envs(launch.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if launch.show_stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn flashsale-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if line.starts_with("listening on") {
                    return true;
                }
            }
            false
        })
        .await
        .expect("the server starts within 60 s");
        assert!(listening, "the server exited before listening");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr: launch.addr,
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is still running")
    }

    /// Sends `signal` (a `kill -s` name: STOP, CONT…) and returns at once.
    pub async fn signal(&self, signal: &str) {
        let pid = self.pid();
        let sent = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .await
            .expect("kill -s");
        assert!(sent.success(), "kill -s {signal} {pid} failed");
    }

    /// True once the process has exited by itself.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// Sends SIGTERM and returns at once (the server shuts down meanwhile).
    ///
    /// The binary installs its SIGTERM handler only once it serves, a moment
    /// after it prints that it listens (longer on a loaded machine), and a
    /// SIGTERM before that kills it outright; so this first waits until the
    /// process catches SIGTERM (Linux: `SigCgt` in `/proc/<pid>/status`).
    pub async fn signal_term(&self) {
        let pid = self.child.id().expect("the server is still running");
        wait_until_it_catches_sigterm(pid).await;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit; panics if it takes longer than
    /// [`EXIT_TIMEOUT`] (a hang).
    pub async fn wait(mut self) -> ExitStatus {
        tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .expect("the server exits within 60 s")
            .expect("wait")
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(self) -> ExitStatus {
        self.signal_term().await;
        self.wait().await
    }
}

/// SIGTERM's bit in the signal masks of `/proc/<pid>/status`.
const SIGTERM_BIT: u64 = 1 << (15 - 1);

/// Waits until process `pid` has a handler for SIGTERM; at once where
/// `/proc` cannot tell.
async fn wait_until_it_catches_sigterm(pid: u32) {
    let status = format!("/proc/{pid}/status");
    let catches = || -> Option<bool> {
        let text = std::fs::read_to_string(&status).ok()?;
        let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
        let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
        Some(mask & SIGTERM_BIT != 0)
    };
    let waited = tokio::time::timeout(EXIT_TIMEOUT, async {
        while catches() == Some(false) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the server installed no SIGTERM handler within {EXIT_TIMEOUT:?}"
    );
}

/// A loopback address with a port that was free a moment ago, below the
/// kernel's ephemeral range: a server restarted on it cannot find it taken
/// by a client's outgoing connection (or a client's reconnect to it
/// connecting to itself) while it was down.
pub fn free_addr() -> SocketAddr {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut rng = rand::thread_rng();
    if ephemeral_low > 11_000 {
        for _ in 0..1000 {
            let port = rng.gen_range(10_000..ephemeral_low);
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return listener.local_addr().expect("addr");
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Size in bytes of the largest file directly in `dir`.
pub fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the data dir")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|meta| meta.len())
        .max()
        .unwrap_or(0)
}
