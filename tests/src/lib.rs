//! Helpers for integration tests that run the real `lockstep` binary.

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
