//! The three echo servers under test. Each binds 127.0.0.1 port 0 with a
//! backlog of 1024, sets TCP_NODELAY on accepted sockets, announces its port
//! on `ready`, and serves until the process is killed.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

use crate::sys::{event_buffer, setsockopt_int, Epoll};

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// torsion-core's reactor with an echo `Protocol`.
    Torsion,
    /// A tokio current-thread runtime, one task per connection.
    Tokio,
    /// A minimal level-triggered epoll loop with one shared buffer.
    Raw,
}

impl ServerKind {
    /// All kinds, in table order.
    pub const ALL: [ServerKind; 3] = [ServerKind::Torsion, ServerKind::Tokio, ServerKind::Raw];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Torsion => "torsion",
            ServerKind::Tokio => "tokio",
            ServerKind::Raw => "raw",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<ServerKind> {
        ServerKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

const LOCALHOST: &str = "127.0.0.1:0";
const BACKLOG: i32 = 1024;

fn bind_listener() -> io::Result<TcpListener> {
    let addr: SocketAddr = LOCALHOST.parse().map_err(io::Error::other)?;
    let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Runs `kind` on this thread until the process is killed; `ready` gets the port.
pub fn run(kind: ServerKind, ready: impl FnOnce(u16)) -> io::Result<()> {
    match kind {
        ServerKind::Torsion => torsion(ready),
        ServerKind::Tokio => tokio(ready),
        ServerKind::Raw => raw(ready),
    }
}

fn torsion(ready: impl FnOnce(u16)) -> io::Result<()> {
    use torsion_core::{factory_fn, Protocol, Reactor, Transport};

    struct Echo(Option<Transport>);
    impl Protocol for Echo {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, data: &[u8]) {
            if let Some(t) = &self.0 {
                t.write(data);
            }
        }
    }

    let reactor = Reactor::new()?;
    // listen_tcp sets the same backlog (1024) and TCP_NODELAY on accepted sockets.
    let port = reactor.listen_tcp(
        LOCALHOST.parse().map_err(io::Error::other)?,
        factory_fn(|| Echo(None)),
    )?;
    ready(port.local_addr().port());
    reactor.run().map_err(io::Error::other)
}

fn tokio(ready: impl FnOnce(u16)) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(bind_listener()?)?;
        ready(listener.local_addr()?.port());
        loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                // The usual tokio echo: a buffer per connection task.
                let mut buf = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

/// The reference: level-triggered epoll, one read and one write per event,
/// one buffer for everything. Bytes the kernel did not take (rare: the peer
/// stopped reading) wait in a per-fd map until EPOLLOUT.
fn raw(ready: impl FnOnce(u16)) -> io::Result<()> {
    const LISTENER: u64 = u64::MAX;
    let listener = bind_listener()?;
    ready(listener.local_addr()?.port());
    let lfd = listener.as_raw_fd();
    let ep = Epoll::new()?;
    ep.add(lfd, libc::EPOLLIN as u32, LISTENER)?;
    let mut events = event_buffer(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: HashMap<i32, Vec<u8>> = HashMap::new();
    let close = |fd: i32, pending: &mut HashMap<i32, Vec<u8>>| {
        pending.remove(&fd);
        // SAFETY: fd is a connection we accepted and still own; closing also
        // removes it from the epoll set.
        unsafe { libc::close(fd) };
    };
    loop {
        let n = ep.wait(&mut events, -1)?;
        for ev in &events[..n] {
            let (flags, data) = (ev.events, ev.u64);
            if data == LISTENER {
                loop {
                    // SAFETY: null address pointers are allowed by accept4.
                    let fd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        break; // EAGAIN, or an error we retry on the next event
                    }
                    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
                    if ep.add(fd, libc::EPOLLIN as u32, fd as u64).is_err() {
                        close(fd, &mut pending);
                    }
                }
                continue;
            }
            let fd = data as i32;
            if flags & libc::EPOLLOUT as u32 != 0 {
                if let Some(rest) = pending.get_mut(&fd) {
                    // SAFETY: writes from a live slice.
                    let w = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
                    if w > 0 {
                        rest.drain(..w as usize);
                    }
                    if rest.is_empty() {
                        pending.remove(&fd);
                        let _ = ep.modify(fd, libc::EPOLLIN as u32, fd as u64);
                    }
                }
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0 {
                continue;
            }
            // SAFETY: reads into our buffer, at most its length.
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r == 0 {
                close(fd, &mut pending);
                continue;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    close(fd, &mut pending);
                }
                continue;
            }
            let r = r as usize;
            if let Some(rest) = pending.get_mut(&fd) {
                rest.extend_from_slice(&buf[..r]);
                continue;
            }
            // SAFETY: writes from our buffer, within the bytes just read.
            let w = unsafe { libc::write(fd, buf.as_ptr().cast(), r) };
            let w = if w < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    close(fd, &mut pending);
                    continue;
                }
                0
            } else {
                w as usize
            };
            if w < r {
                pending.insert(fd, buf[w..r].to_vec());
                let _ = ep.modify(fd, (libc::EPOLLIN | libc::EPOLLOUT) as u32, fd as u64);
            }
        }
    }
}
