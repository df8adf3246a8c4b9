//! The binary starts and names itself (this file also makes `cargo test`
//! build the `lockstep` binary that lockstep-tests runs).

#[test]
fn version_names_the_binary() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_lockstep")).arg("--version").output().expect("run lockstep");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("lockstep {}", env!("CARGO_PKG_VERSION")));
}
