//! The load generator: one thread, raw epoll, meant to run pinned to its
//! own core. It counts completed round trips and samples the server's CPU
//! time at the start and end of the measured window.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::sys::{event_buffer, process_cpu_time, rss_kib, setsockopt_int, Epoll};

/// Size of one echo message.
pub const MSG: usize = 64;

/// What one measured window produced.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Completed round trips (message echoed back, or connection cycle done).
    pub round_trips: u64,
    /// Wall time of the window.
    pub elapsed: Duration,
    /// Server CPU time (user + system) spent in the window.
    pub server_cpu: Duration,
    /// Round trips including the warm-up (for instruction counts under valgrind).
    pub total_round_trips: u64,
}

impl Sample {
    /// Round trips per second.
    pub fn rate(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Server CPU microseconds per round trip.
    pub fn cpu_us_per_rt(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.round_trips.max(1) as f64)
    }
}

/// Timing of a run: warm up, then measure.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Traffic before the measured window starts.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
}

/// Tracks the warm-up/measure phases and takes the two samples.
struct Phases {
    pid: u32,
    window: Window,
    start: Instant,
    begin: Option<(Instant, u64, Duration)>,
}

impl Phases {
    fn new(pid: u32, window: Window) -> Phases {
        Phases {
            pid,
            window,
            start: Instant::now(),
            begin: None,
        }
    }

    /// Called often with the running count; returns the sample once the window is over.
    fn tick(&mut self, count: u64) -> io::Result<Option<Sample>> {
        let now = Instant::now();
        match self.begin {
            None => {
                if now - self.start >= self.window.warmup {
                    self.begin = Some((now, count, process_cpu_time(self.pid)?));
                }
                Ok(None)
            }
            Some((t0, c0, cpu0)) => {
                if now - t0 < self.window.measure {
                    return Ok(None);
                }
                let cpu1 = process_cpu_time(self.pid)?;
                Ok(Some(Sample {
                    round_trips: count - c0,
                    elapsed: now - t0,
                    server_cpu: cpu1.saturating_sub(cpu0),
                    total_round_trips: count,
                }))
            }
        }
    }
}

/// `conns` connections, each sending `in_flight` 64-byte messages back to
/// back (one write) and sending the next batch once all of them came back:
/// a pipeline of depth `in_flight`. `in_flight == 1` is plain ping-pong.
///
/// Batches rather than a sliding window keep the bytes per read and write
/// the same for every server; with a sliding window, a slower server would
/// find more messages coalesced per read and look cheaper per message.
pub fn echo(
    addr: SocketAddr,
    conns: usize,
    in_flight: usize,
    pid: u32,
    window: Window,
) -> io::Result<Sample> {
    let ep = Epoll::new()?;
    let mut streams = Vec::with_capacity(conns);
    let burst = vec![b'x'; MSG * in_flight];
    for i in 0..conns {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        ep.add(s.as_raw_fd(), libc::EPOLLIN as u32, i as u64)?;
        write_all_nb(&mut s, &burst)?;
        streams.push(s);
    }
    // Bytes of the current batch received so far, per connection.
    let mut partial = vec![0usize; conns];
    let mut events = event_buffer(256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut count: u64 = 0;
    let mut phases = Phases::new(pid, window);
    let mut idle_since = Instant::now();
    loop {
        let n = ep.wait(&mut events, 10)?;
        if n > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server stopped answering",
            ));
        }
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let s = &mut streams[i];
            let r = match s.read(&mut buf) {
                Ok(0) => return Err(io::Error::other("the server closed a connection")),
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            partial[i] += r;
            if partial[i] >= burst.len() {
                // The whole batch is back: count its messages, send the next.
                partial[i] -= burst.len();
                count += in_flight as u64;
                write_all_nb(s, &burst)?;
            }
        }
        if let Some(sample) = phases.tick(count)? {
            return Ok(sample);
        }
    }
}

/// Writes everything to a non-blocking socket whose send buffer has room
/// for what this generator keeps in flight (at most a few KiB).
fn write_all_nb(s: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !data.is_empty() {
        match s.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "send buffer full"));
                }
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One connection attempt of the connect-rate workload.
struct Cycle {
    fd: i32,
    sent: bool,
    got: usize,
}

/// Connect + one 64-byte echo + close, `concurrency` cycles at a time.
///
/// The client closes first, so TIME_WAIT lands on the client side; its
/// sockets bind round-robin to source addresses 127.0.0.2..=127.0.0.251
/// (`IP_BIND_ADDRESS_NO_PORT`, so the port is picked at connect) to keep
/// clear of ephemeral-port exhaustion.
pub fn connect_rate(
    addr: SocketAddr,
    concurrency: usize,
    pid: u32,
    window: Window,
) -> io::Result<Sample> {
    let ep = Epoll::new()?;
    let mut slots: Vec<Option<Cycle>> = (0..concurrency).map(|_| None).collect();
    let mut events = event_buffer(256);
    let mut buf = [0u8; 1024];
    let msg = [b'c'; MSG];
    let mut next_src: u32 = 0;
    let mut count: u64 = 0;
    let mut phases = Phases::new(pid, window);
    let mut idle_since = Instant::now();
    for (i, slot) in slots.iter_mut().enumerate() {
        *slot = Some(start_cycle(&ep, addr, i, &mut next_src)?);
    }
    loop {
        let n = ep.wait(&mut events, 10)?;
        if n > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server stopped answering",
            ));
        }
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let Some(c) = slots[i].as_mut() else { continue };
            let flags = ev.events;
            if flags & libc::EPOLLERR as u32 != 0 {
                return Err(io::Error::other(format!(
                    "connect failed: {}",
                    sock_error(c.fd)
                )));
            }
            if !c.sent && flags & libc::EPOLLOUT as u32 != 0 {
                // SAFETY: writes from a live array to our socket.
                let w = unsafe { libc::write(c.fd, msg.as_ptr().cast(), MSG) };
                if w != MSG as isize {
                    return Err(io::Error::other("short write on a fresh connection"));
                }
                c.sent = true;
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP) as u32 != 0 {
                loop {
                    // SAFETY: reads into a live local buffer.
                    let r = unsafe { libc::read(c.fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if r > 0 {
                        c.got += r as usize;
                        continue;
                    }
                    if r == 0 {
                        return Err(io::Error::other("the server closed before echoing"));
                    }
                    break;
                }
                if c.got >= MSG {
                    // SAFETY: closing our own fd (also leaves the epoll set).
                    unsafe { libc::close(c.fd) };
                    count += 1;
                    slots[i] = Some(start_cycle(&ep, addr, i, &mut next_src)?);
                }
            }
        }
        if let Some(sample) = phases.tick(count)? {
            for c in slots.into_iter().flatten() {
                // SAFETY: closing our own fds.
                unsafe { libc::close(c.fd) };
            }
            return Ok(sample);
        }
    }
}

fn sock_error(fd: i32) -> io::Error {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `v`.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut i32).cast(),
            &mut len,
        );
    }
    io::Error::from_raw_os_error(v)
}

fn start_cycle(ep: &Epoll, addr: SocketAddr, slot: usize, next_src: &mut u32) -> io::Result<Cycle> {
    let SocketAddr::V4(dst) = addr else {
        return Err(io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let src = Ipv4Addr::new(127, 0, 0, 2 + (*next_src % 250) as u8);
    *next_src = next_src.wrapping_add(1);
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let bind = sockaddr_in(SocketAddrV4::new(src, 0));
    let to = sockaddr_in(dst);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the sockaddr_in values live across the calls.
    unsafe {
        if libc::bind(fd, (&bind as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        if libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                libc::close(fd);
                return Err(e);
            }
        }
    }
    ep.add(
        fd,
        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32,
        slot as u64,
    )?;
    Ok(Cycle {
        fd,
        sent: false,
        got: 0,
    })
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Opens `n` connections that each echo one byte once (so the server has
/// accepted them and set up its per-connection state) and then stay idle.
/// Returns the server's RSS growth in KiB per connection.
pub fn idle_rss(addr: SocketAddr, n: usize, pid: u32) -> io::Result<f64> {
    // Warm the server up (first accept, first read: buffers touched) before the baseline.
    {
        let mut s = TcpStream::connect(addr)?;
        ping(&mut s)?;
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        ping(&mut s)?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(pid)?;
    drop(conns);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

fn ping(s: &mut TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"p")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
}
