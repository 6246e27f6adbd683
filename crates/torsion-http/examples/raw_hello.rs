//! The benchmark's floor: a minimal edge-triggered epoll loop answering
//! every request head (`\r\n\r\n`) with `Hello, World!`. No parsing, no
//! framework: `cargo run --release -p torsion-http --example raw_hello -- 127.0.0.1:8082`
//! (Linux only; used by `scripts/bench-http.sh`).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

struct Conn {
    stream: TcpStream,
    /// The last bytes of the previous read, to find a `\r\n\r\n` split across reads.
    tail: Vec<u8>,
    out: Vec<u8>,
}

fn ctl(ep: i32, op: i32, fd: i32, events: u32) {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `ep` and `fd` are open descriptors owned by this program.
    unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".into());
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("raw_hello listening on http://{}/", listener.local_addr()?);
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(0) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let lfd = listener.as_raw_fd();
    ctl(ep, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32);
    let mut conns: HashMap<i32, Conn> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` has room for 256 entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 256, -1) };
        if n < 0 {
            continue;
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as i32;
            if fd == lfd {
                while let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    let _ = s.set_nodelay(true);
                    let cfd = s.as_raw_fd();
                    ctl(
                        ep,
                        libc::EPOLL_CTL_ADD,
                        cfd,
                        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32,
                    );
                    conns.insert(
                        cfd,
                        Conn {
                            stream: s,
                            tail: Vec::new(),
                            out: Vec::new(),
                        },
                    );
                }
                continue;
            }
            let Some(c) = conns.get_mut(&fd) else {
                continue;
            };
            let mut close = false;
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(k) => {
                        let mut data = std::mem::take(&mut c.tail);
                        data.extend_from_slice(&buf[..k]);
                        let heads = data.windows(4).filter(|w| w == b"\r\n\r\n").count();
                        for _ in 0..heads {
                            c.out.extend_from_slice(RESPONSE);
                        }
                        let keep = data.len().min(3);
                        c.tail = data[data.len() - keep..].to_vec();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
            while !close && !c.out.is_empty() {
                match c.stream.write(&c.out) {
                    Ok(k) => {
                        c.out.drain(..k);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => close = true,
                }
            }
            if close {
                ctl(ep, libc::EPOLL_CTL_DEL, fd, 0);
                conns.remove(&fd);
            }
        }
    }
}
