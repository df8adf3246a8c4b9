//! Helpers for integration tests that run the real `lockstep` binary.

pub mod pair;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `lockstep` binary of this build (target/<profile>/lockstep). The
/// first call in a test process runs `cargo build` for it (a no-op when it
/// is up to date), so `cargo test -p lockstep-tests` never runs a stale binary.
pub fn lockstep_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test binary> -> target/<profile>/lockstep
        let profile_dir = exe.parent().and_then(Path::parent).expect("target profile directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "lockstep-replicator", "--bin", "lockstep"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the lockstep binary failed");
        profile_dir.join("lockstep")
    })
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `lockstep ARGS...` to completion.
pub fn lockstep<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(lockstep_bin()).args(args).output().expect("run lockstep").into()
}

/// Runs `lockstep ARGS...` and insists on exit code `code`.
#[track_caller]
pub fn expect_code<I, S>(code: i32, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let run = lockstep(&args);
    assert_eq!(run.code, code, "lockstep {args:?}\nstdout: {}\nstderr: {}", run.stdout, run.stderr);
    run
}

/// Shorthand for a path argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 test path")
}

/// A running `lockstep serve`, killed (SIGKILL) when dropped unless it exited.
#[derive(Debug)]
pub struct Served {
    pub child: std::process::Child,
    /// The bound client address.
    pub client: String,
    /// The bound replication address (secondaries).
    pub repl: Option<String>,
    pub stderr: PathBuf,
}

/// Starts `lockstep serve ARGS...` with stderr to `stderr` and waits for
/// its ready line. Panics if it exits first (use [`serve_exit`] for that).
pub fn serve<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)], stderr: &Path) -> Served {
    match try_serve(args, env, stderr) {
        Ok(s) => s,
        Err(run) => panic!("lockstep serve exited with {}: {}", run.code, run.stderr),
    }
}

/// Like [`serve`], but a process that exits before it is ready is returned
/// as its [`Run`].
pub fn try_serve<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)], stderr: &Path) -> Result<Served, Run> {
    use std::io::BufRead;
    let log = std::fs::File::create(stderr).expect("create stderr file");
    let mut cmd = Command::new(lockstep_bin());
    cmd.arg("serve").args(args).stdout(std::process::Stdio::piped()).stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start lockstep serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    if line.trim().is_empty() {
        let status = child.wait().expect("wait");
        return Err(Run {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: std::fs::read_to_string(stderr).unwrap_or_default(),
        });
    }
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
    let text = |k: &str| ready[k].as_str().map(str::to_string);
    Ok(Served { child, client: text("client").expect("client address"), repl: text("repl"), stderr: stderr.into() })
}

/// Starts `lockstep serve ARGS...` and waits (up to 20 s) for it to exit:
/// its exit code (None if it kept running) and its log.
pub fn serve_until_exit<S: AsRef<std::ffi::OsStr>>(args: &[S], stderr: &Path) -> (Option<i32>, String) {
    match try_serve(args, &[], stderr) {
        Ok(mut node) => (node.wait_exit(std::time::Duration::from_secs(20)), node.log()),
        Err(run) => (Some(run.code), run.stderr),
    }
}

impl Served {
    /// Waits for the process to exit (at most `timeout`) and returns its code.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return Some(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
