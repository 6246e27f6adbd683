//! `Failure`: wrapping, check/downcast/trap, Display with the error chain,
//! backtraces on request.

use std::error::Error;
use std::fmt;
use std::process::Command;

use torsion_core::{CancelledError, Failure};

#[derive(Debug)]
struct Outer(std::io::Error);
impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not load config")
    }
}
impl Error for Outer {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn display_shows_the_error_chain() {
    let f = Failure::new(Outer(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no such file",
    )));
    assert_eq!(f.to_string(), "could not load config: no such file");
    assert!(f.check::<Outer>());
    assert!(
        !f.check::<std::io::Error>(),
        "check looks at the outer error only"
    );
    assert_eq!(
        f.downcast_ref::<Outer>().unwrap().0.kind(),
        std::io::ErrorKind::NotFound
    );
    assert!(f.error().source().is_some());
}

#[test]
fn trap_returns_the_failure_when_it_is_of_another_type() {
    let f = Failure::new(CancelledError);
    assert!(f.clone().trap::<CancelledError>().is_ok());
    let back = f.trap::<Outer>().unwrap_err();
    assert!(back.check::<CancelledError>());
}

#[test]
fn clones_share_the_error() {
    let f = Failure::msg("shared");
    let g = f.clone();
    assert!(std::ptr::eq(f.error(), g.error()));
}

/// Run in a child process so the backtrace setting is read fresh.
#[test]
#[ignore = "run by backtrace_follows_rust_backtrace in a child process"]
fn backtrace_child() {
    let want = std::env::var("EXPECT_BACKTRACE").unwrap() == "1";
    let f = Failure::msg("with or without a backtrace");
    assert_eq!(f.backtrace().is_some(), want);
    if want {
        assert!(format!("{f:?}").contains("backtrace_child"), "{f:?}");
    }
}

#[test]
fn backtrace_follows_rust_backtrace() {
    for (setting, expect) in [("1", "1"), ("0", "0")] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["backtrace_child", "--exact", "--ignored"])
            .env("RUST_BACKTRACE", setting)
            .env_remove("RUST_LIB_BACKTRACE")
            .env("EXPECT_BACKTRACE", expect)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "RUST_BACKTRACE={setting}: {stdout}");
        assert!(
            stdout.contains("1 passed"),
            "the child test did not run: {stdout}"
        );
    }
}
