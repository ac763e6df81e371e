//! The real `hub` binary run as a child process: how a test starts one.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// `hub`, with nothing of the test's environment but PATH, against `database_url`.
pub(crate) fn hub(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POLYHUB_DATABASE__URL", database_url)
        .env("POLYHUB_DATABASE__ACQUIRE_TIMEOUT_MS", "1000");
    cmd
}

/// A running `hub serve`, killed when the test ends. Its stdout stays open
/// for as long as it runs, as a terminal's would.
pub(crate) struct Serving {
    pub(crate) child: Child,
    pub(crate) stdout: BufReader<std::process::ChildStdout>,
}

impl Serving {
    pub(crate) fn start(mut cmd: Command) -> (Self, String) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).unwrap();
        (Self { child, stdout }, first_line)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
