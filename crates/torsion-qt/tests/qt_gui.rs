//! The reactor under a `QGuiApplication` (GUI event dispatcher, offscreen
//! platform plugin): one application object per process, hence its own
//! binary and harness.

#[path = "../../torsion-tokio/tests/common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use torsion_core::Reactor;

const NAME: &str = "gui_application_serves_echo_timers_and_cross_thread_calls";

fn check() -> Result<(), String> {
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let _host = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
    set_current(Some(&reactor));
    let log = Rc::new(RefCell::new(Log::default()));
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .map_err(|e| e.to_string())?;
    let addr = port.local_addr();
    let timer_fired = Rc::new(RefCell::new(false));
    let t = timer_fired.clone();
    reactor.call_later(Duration::from_millis(10), move || *t.borrow_mut() = true);
    let r = reactor.clone();
    let bound = reactor.call_later(Duration::from_secs(30), move || {
        let _ = r.stop();
    });
    let handle = reactor.handle();
    let ran_on = Arc::new(Mutex::new(None));
    let ro = ran_on.clone();
    let client = std::thread::spawn(move || {
        let echoed = echo_roundtrip(addr, b"hello from a GUI thread");
        handle.call_from_thread(move || {
            *ro.lock().unwrap() = Some(std::thread::current().id());
        });
        // The 10 ms timer was scheduled before the loop ran; stop well after it.
        std::thread::sleep(Duration::from_millis(30));
        stop_from_thread(&handle);
        echoed
    });
    reactor.run().map_err(|e| e.to_string())?;
    set_current(None);
    let echoed = client.join().map_err(|_| "client panicked")?;
    if !bound.active() {
        return Err("hit the 30 s bound".into());
    }
    let _ = bound.cancel();
    if echoed.map_err(|e| e.to_string())? != b"hello from a GUI thread" {
        return Err("echo mismatch".into());
    }
    if !*timer_fired.borrow() {
        return Err("timer did not fire".into());
    }
    let got = *ran_on.lock().unwrap();
    if got != Some(std::thread::current().id()) {
        return Err(format!("call_from_thread ran on {got:?}"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let mut filters = Vec::new();
    while let Some(a) = it.next() {
        if matches!(
            a.as_str(),
            "--format" | "--color" | "--test-threads" | "--skip" | "--logfile" | "-Z"
        ) {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a.clone());
        }
    }
    let selected = filters.is_empty() || filters.iter().any(|f| NAME.contains(f.as_str()));
    let ignored = args.iter().any(|a| a == "--ignored");
    if args.iter().any(|a| a == "--list") {
        if selected && !ignored {
            println!("{NAME}: test");
        }
        return;
    }
    if !selected || ignored {
        return;
    }
    // No display here: Qt's offscreen platform plugin.
    std::env::set_var("QT_QPA_PLATFORM", "offscreen");
    let _app = torsion_qt::CoreApplication::new_gui().expect("first application object");
    match check() {
        Ok(()) => println!("test {NAME} ... ok\ntest result: ok. 1 passed; 0 failed"),
        Err(e) => {
            println!("test {NAME} ... FAILED: {e}\ntest result: FAILED. 0 passed; 1 failed");
            std::process::exit(1);
        }
    }
}
