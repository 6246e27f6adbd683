//! A small line-protocol record store backed by the connection pool.
//!
//! ```text
//! cargo run -p torsion-db --example record_store -- [DB_FILE | :memory: | POSTGRES_URL] [PORT]
//! printf 'PUT greeting hello world\nGET greeting\nLIST\nDEL greeting\nQUIT\n' | nc 127.0.0.1 PORT
//! ```
//!
//! Commands (one per line, at most 4 KiB): `PUT key value…`, `GET key`,
//! `DEL key`, `LIST`, `QUIT`. Replies: `OK`, `VALUE text`, `NOTFOUND`,
//! `KEY name` lines ended by `END`, `ERR message`. Replies keep the order of
//! the commands even though the database work runs on several threads: each
//! command's Deferred is chained after the previous one's.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use torsion_core::{factory_fn, Deferred, Protocol, Reactor, Transport};
use torsion_db::{params, ConnectionPool, PoolOptions, Target};

const MAX_LINE: usize = 4096;

struct RecordProtocol {
    db: ConnectionPool,
    transport: Option<Transport>,
    buffer: Vec<u8>,
    /// The reply chain: each command runs after the previous one replied.
    tail: Rc<RefCell<Deferred<()>>>,
}

impl RecordProtocol {
    fn new(db: ConnectionPool) -> Self {
        RecordProtocol {
            db,
            transport: None,
            buffer: Vec::new(),
            tail: Rc::new(RefCell::new(Deferred::succeed(()))),
        }
    }

    fn command(&mut self, line: &str) {
        let Some(t) = self.transport.clone() else {
            return;
        };
        let db = self.db.clone();
        let line = line.trim_end_matches('\r').to_string();
        let previous = self.tail.replace(Deferred::new());
        let next = previous.add_callback_deferred(move |_| reply(&db, &t, &line));
        *self.tail.borrow_mut() = next;
    }
}

/// Runs one command and writes its reply; never fails (errors become `ERR`).
fn reply(db: &ConnectionPool, t: &Transport, line: &str) -> Deferred<()> {
    let mut words = line.splitn(3, ' ');
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let key = words.next().unwrap_or("").to_string();
    let rest = words.next().unwrap_or("").to_string();
    let t = t.clone();
    let answer: Deferred<String> = match (verb.as_str(), key.is_empty()) {
        ("PUT", false) => db
            .run_operation(
                "INSERT INTO records (key, value) VALUES ($1, $2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, rest],
            )
            .add_callback(|_| "OK\n".to_string()),
        ("GET", false) => db
            .run_query("SELECT value FROM records WHERE key = $1", params![key])
            .add_callback(|rows| match rows.first().map(|r| r.get::<String, _>(0)) {
                Some(Ok(v)) => format!("VALUE {v}\n"),
                Some(Err(e)) => format!("ERR {e}\n"),
                None => "NOTFOUND\n".to_string(),
            }),
        ("DEL", false) => db
            .run_operation("DELETE FROM records WHERE key = $1", params![key])
            .add_callback(|n| if n == 0 { "NOTFOUND\n" } else { "OK\n" }.to_string()),
        ("LIST", true) => db
            .run_query("SELECT key FROM records ORDER BY key", params![])
            .add_callback(|rows| {
                let mut out = String::new();
                for r in rows {
                    if let Ok(k) = r.get::<String, _>(0) {
                        out.push_str(&format!("KEY {k}\n"));
                    }
                }
                out + "END\n"
            }),
        ("QUIT", true) => {
            t.write(b"BYE\n");
            t.lose_connection();
            return Deferred::succeed(());
        }
        _ => Deferred::succeed("ERR unknown command or missing key\n".to_string()),
    };
    answer.add_both(move |r| {
        match r {
            Ok(text) => t.write(text.as_bytes()),
            Err(f) => t.write(format!("ERR {f}\n").as_bytes()),
        }
        Ok(())
    })
}

impl Protocol for RecordProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
        while let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=pos).collect();
            match std::str::from_utf8(&line[..line.len() - 1]) {
                Ok(text) => self.command(text),
                Err(_) => {
                    if let Some(t) = &self.transport {
                        t.write(b"ERR lines must be UTF-8\n");
                    }
                }
            }
        }
        if self.buffer.len() > MAX_LINE {
            if let Some(t) = &self.transport {
                t.write(b"ERR line too long\n");
                t.lose_connection();
            }
            self.buffer.clear();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let target = match args.next() {
        Some(url) if url.starts_with("postgres") || url.contains("host=") => Target::Postgres(url),
        Some(path) if path != ":memory:" => Target::SqliteFile(path.into()),
        _ => Target::SqliteMemory,
    };
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);

    let reactor = Reactor::new()?;
    let opts = PoolOptions::default().on_open(|c| {
        if c.as_sqlite().is_some() {
            c.batch_execute("PRAGMA journal_mode = WAL")?;
        }
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
    });
    let db = ConnectionPool::new(&reactor, target, opts);
    let port = reactor.listen_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        factory_fn(move || RecordProtocol::new(db.clone())),
    )?;
    println!("record store listening on {}", port.local_addr());
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
