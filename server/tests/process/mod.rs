//! The real `flashsale-server` binary as a child process, for the tests
//! that must kill it, signal it, or read what it writes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale-server"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &addr.to_string(), "--shards", "2", "--demo"])
            .args(args)
            .env("FLASHSALE_ADMIN_PASSWORD", admin_password)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(if show_stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn flashsale-server");
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
        Self { child, addr }
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server exits within 30 s of SIGTERM")
            .expect("wait")
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
