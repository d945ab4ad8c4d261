//! The `ntk` binary starts, prints its version and help, and rejects unknown commands with
//! exit code 2. (Having an integration test here also makes `cargo test --workspace` build the
//! binary that the end-to-end tests of `ntk-tests` run.)

use std::process::Command;

fn ntk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ntk"))
}

#[test]
fn version_help_and_unknown_command() {
    let v = ntk().arg("--version").output().unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
    let h = ntk().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&h.stdout).to_string();
    for cmd in ["kernel", "bench", "dispersion", "phase", "train", "spectrum"] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    let u = ntk().arg("no-such-command").output().unwrap();
    assert_eq!(u.status.code(), Some(2));
}
