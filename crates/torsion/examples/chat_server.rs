//! A line-based chat server in the style of Twisted's docs:
//! `cargo run --example chat_server -- 127.0.0.1:8123`, then connect with
//! `nc 127.0.0.1 8123` from two terminals.
//!
//! Each client first picks a name; after that every line it sends is
//! broadcast to the others as `<name> line`. Lines end with `\n` (an optional
//! `\r` before it is dropped) and are at most [`MAX_LINE`] bytes: a longer
//! one gets an error and the connection is closed, so a client cannot make
//! the server buffer without bound. (Splitting is done on bytes here; the
//! core's `LineReceiver` will do it for real protocols.)

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use torsion::prelude::*;

/// Longest line accepted, in bytes (without the line ending).
pub const MAX_LINE: usize = 1024;
/// Longest name accepted, in bytes.
pub const MAX_NAME: usize = 32;

/// Everyone who has picked a name, by name.
pub type Users = Rc<RefCell<BTreeMap<String, Transport>>>;

enum State {
    GetName,
    Chat(String),
}

/// One client's session.
pub struct Chat {
    users: Users,
    transport: Option<Transport>,
    state: State,
    buffer: Vec<u8>,
    kicked: bool,
}

impl Chat {
    fn new(users: Users) -> Self {
        Chat {
            users,
            transport: None,
            state: State::GetName,
            buffer: Vec::new(),
            kicked: false,
        }
    }

    fn send(&self, line: &str) {
        if let Some(t) = &self.transport {
            t.write(line.as_bytes());
            t.write(b"\r\n");
        }
    }

    /// Sends `line` to every named user except `except`.
    fn broadcast(&self, except: &str, line: &str) {
        for (name, t) in self.users.borrow().iter() {
            if name != except {
                t.write(line.as_bytes());
                t.write(b"\r\n");
            }
        }
    }

    fn line_received(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            self.send("Please send UTF-8 text.");
            return;
        };
        match &self.state {
            State::GetName => self.handle_name(line.trim()),
            State::Chat(name) => {
                let name = name.clone();
                self.broadcast(&name, &format!("<{name}> {line}"));
            }
        }
    }

    fn handle_name(&mut self, name: &str) {
        if name.is_empty() || name.len() > MAX_NAME || name.contains(char::is_whitespace) {
            self.send(&format!(
                "Names are 1 to {MAX_NAME} bytes without spaces; what's your name?"
            ));
            return;
        }
        if self.users.borrow().contains_key(name) {
            self.send("Name taken, please choose another.");
            return;
        }
        self.send(&format!("Welcome, {name}!"));
        self.broadcast(name, &format!("* {name} has joined"));
        if let Some(t) = &self.transport {
            self.users.borrow_mut().insert(name.to_string(), t.clone());
        }
        self.state = State::Chat(name.to_string());
    }
}

impl Protocol for Chat {
    fn connection_made(&mut self, t: Transport) {
        self.transport = Some(t);
        self.send("What's your name?");
    }

    fn data_received(&mut self, data: &[u8]) {
        if self.kicked {
            return;
        }
        self.buffer.extend_from_slice(data);
        let mut start = 0;
        let mut too_long = false;
        while let Some(pos) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = self.buffer[start..end].to_vec();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            start = end + 1;
            if line.len() > MAX_LINE {
                too_long = true;
                break;
            }
            self.line_received(&line);
        }
        self.buffer.drain(..start);
        // A partial line may hold MAX_LINE bytes plus a '\r'; more cannot become a valid line.
        if too_long || self.buffer.len() > MAX_LINE + 1 {
            self.send("Line too long; goodbye.");
            self.kicked = true;
            self.buffer = Vec::new();
            if let Some(t) = &self.transport {
                t.lose_connection();
            }
        }
    }

    fn connection_lost(&mut self, _reason: Failure) {
        if let State::Chat(name) = &self.state {
            let name = name.clone();
            self.users.borrow_mut().remove(&name);
            self.broadcast(&name, &format!("* {name} has left"));
        }
        // Drop our transport handle: the connection is gone.
        self.transport = None;
    }
}

/// The server's factory: one shared user table for all sessions.
pub fn chat_factory() -> std::rc::Rc<impl Factory> {
    let users: Users = Rc::new(RefCell::new(BTreeMap::new()));
    factory_fn(move || Chat::new(users.clone()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8123".into());
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let reactor = Reactor::new()?;
    let port = reactor.listen_tcp(addr, chat_factory())?;
    println!("chat server listening on {}", port.host());
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
