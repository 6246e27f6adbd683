//! # torsion-cocoa
//!
//! Runs a Torsion `Reactor` inside a Core Foundation `CFRunLoop` (the loop
//! under Cocoa's `NSApplication`), so a macOS GUI program uses Torsion
//! networking on its main thread with no thread per socket: one
//! `CFFileDescriptor` watches the reactor's poller fd (kqueue) and one
//! `CFRunLoopTimer` is moved to `Reactor::next_timeout()` after each turn.
//! The driving logic is `torsion_core::hostloop::HostDriver`, the same code
//! torsion-glib and torsion-tokio run in their tests.
//!
//! On non-Apple targets this crate is empty, so workspace builds pass
//! everywhere. It is compile-checked (not run) on Linux with
//! `cargo check -p torsion-cocoa --target x86_64-apple-darwin`.
//!
//! ```ignore
//! // macOS only
//! let reactor = torsion_core::Reactor::new()?;
//! let _host = torsion_cocoa::attach(&reactor)?; // the current thread's CFRunLoop
//! reactor.run()?; // CFRunLoopRun until reactor.stop()
//! ```

#![warn(missing_docs)]

#[cfg(target_vendor = "apple")]
mod imp;
#[cfg(target_vendor = "apple")]
pub use imp::{attach, CocoaHost};
