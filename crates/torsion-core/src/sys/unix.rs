//! Unix specifics: the signal self-pipe, fd counting.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use mio::unix::SourceFd;

/// The write end of the self-pipe, for the async-signal-safe handler.
static SIGNAL_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // write(2) is async-signal-safe; a full pipe just drops the byte,
        // which is fine: one pending byte already wakes the reactor.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// A non-blocking pipe that signal handlers write the signal number to.
pub(crate) struct SignalPipe {
    read: RawFd,
    write: RawFd,
}

#[cfg(not(target_vendor = "apple"))]
fn nonblocking_pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Apple has no `pipe2`: set the flags after the fact (torsion-cocoa's target).
#[cfg(target_vendor = "apple")]
fn nonblocking_pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for fd in fds {
        let ok = unsafe {
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) == 0
                && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
        };
        if !ok {
            let e = io::Error::last_os_error();
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            return Err(e);
        }
    }
    Ok((fds[0], fds[1]))
}

/// A non-blocking, close-on-exec stream socket (flags set atomically where the OS can).
pub(crate) fn new_stream_socket(
    domain: socket2::Domain,
    protocol: Option<socket2::Protocol>,
) -> io::Result<socket2::Socket> {
    new_socket(domain, socket2::Type::STREAM, protocol)
}

/// A non-blocking, close-on-exec socket of any type (flags set atomically where the OS can).
pub(crate) fn new_socket(
    domain: socket2::Domain,
    ty: socket2::Type,
    protocol: Option<socket2::Protocol>,
) -> io::Result<socket2::Socket> {
    #[cfg(not(target_vendor = "apple"))]
    {
        socket2::Socket::new(domain, ty.nonblocking().cloexec(), protocol)
    }
    #[cfg(target_vendor = "apple")]
    {
        // socket2 sets FD_CLOEXEC (and SO_NOSIGPIPE) itself on Apple targets.
        let s = socket2::Socket::new(domain, ty, protocol)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
}

impl SignalPipe {
    pub(crate) fn install(signals: &[libc::c_int]) -> io::Result<SignalPipe> {
        let (read, write) = nonblocking_pipe()?;
        SIGNAL_WRITE_FD.store(write, Ordering::Relaxed);
        for &sig in signals {
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(SignalPipe { read, write })
    }

    pub(crate) fn source(&self) -> SourceFd<'_> {
        SourceFd(&self.read)
    }

    /// The signals received since the last call.
    pub(crate) fn drain(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n =
                unsafe { libc::read(self.read, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
        }
        out
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        let _ =
            SIGNAL_WRITE_FD.compare_exchange(self.write, -1, Ordering::Relaxed, Ordering::Relaxed);
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// Number of open file descriptors of this process (Linux: /proc/self/fd).
pub(crate) fn open_fd_count_impl() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

// ---- transports: processes, Unix sockets, descriptors ----

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sets or clears `O_NONBLOCK` on a descriptor.
pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Duplicates `fd` to a close-on-exec descriptor numbered at least `min`.
pub(crate) fn dup_cloexec_at_least(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    #[cfg(not(target_vendor = "apple"))]
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    #[cfg(target_vendor = "apple")]
    let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(target_vendor = "apple")]
    for fd in [fds[0], fds[1]] {
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(pair)
}

/// A descriptor that becomes readable when process `pid` exits (Linux ≥ 5.3).
#[cfg(target_os = "linux")]
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Process descriptors are Linux-only; elsewhere spawning reports this error.
#[cfg(not(target_os = "linux"))]
pub(crate) fn pidfd_open(_pid: u32) -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "child processes need pidfd (Linux) in this version",
    ))
}

/// `sendfile(2)` of up to `len` bytes of `file` at `offset` to socket `out`;
/// 0 when the socket is full (`EAGAIN`).
#[cfg(target_os = "linux")]
pub(crate) fn sendfile(
    out: RawFd,
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    loop {
        // SAFETY: both descriptors are open for the duration of the call
        // (the caller borrows the socket and the file), and `off` is a
        // valid out-parameter.
        let n = unsafe { libc::sendfile(out, file.as_raw_fd(), &mut off, len) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Only Linux's `sendfile(2)` is used; elsewhere callers write the bytes.
#[cfg(not(target_os = "linux"))]
pub(crate) fn sendfile(
    _out: RawFd,
    _file: &std::fs::File,
    _offset: u64,
    _len: usize,
) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "sendfile is used on Linux only",
    ))
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Reaps `pid` if it has ended (`waitpid(WNOHANG)`); `Ok(None)` while it runs.
pub(crate) fn try_reap(pid: u32) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if libc::WIFEXITED(status) {
            return Ok(Some(WaitStatus::Exited(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(WaitStatus::Signaled(libc::WTERMSIG(status))));
        }
        // Stopped/continued reports are not endings; keep waiting.
        return Ok(None);
    }
}

/// Sends `sig` to process `pid`.
pub(crate) fn kill(pid: u32, sig: i32) -> io::Result<()> {
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pseudo-terminal pair: (master, slave), both close-on-exec.
pub(crate) fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = 0;
    let mut slave = 0;
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            // null_mut coerces to the `*const` Linux takes and is what Apple takes.
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [m.as_raw_fd(), s.as_raw_fd()] {
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((m, s))
}

/// In a forked child before exec: make the terminal on fd 0 the controlling one.
///
/// # Safety
/// Only async-signal-safe calls; to be used from `pre_exec`.
pub(crate) unsafe fn child_take_terminal() -> io::Result<()> {
    if libc::setsid() < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In a forked child before exec: place `src` at descriptor `dst`, inheritable.
///
/// # Safety
/// Only async-signal-safe calls; to be used from `pre_exec`.
pub(crate) unsafe fn child_place_fd(src: RawFd, dst: RawFd) -> io::Result<()> {
    if src == dst {
        let flags = libc::fcntl(dst, libc::F_GETFD);
        if flags < 0 || libc::fcntl(dst, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    } else if libc::dup2(src, dst) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_PEERCRED` of a connected Unix socket: (pid, uid, gid).
#[cfg(target_os = "linux")]
pub(crate) fn peer_credentials(fd: RawFd) -> io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// Peer credentials with a pid are Linux-only (`SO_PEERCRED`) in this version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn peer_credentials(_fd: RawFd) -> io::Result<(i32, u32, u32)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "peer credentials need SO_PEERCRED (Linux) in this version",
    ))
}

/// The address family of a socket (from its local address), or an error for a non-socket.
#[cfg(not(target_os = "linux"))]
pub(crate) fn socket_domain(fd: RawFd) -> io::Result<i32> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockname(
            fd,
            &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::from(storage.ss_family))
}

/// The address family of a socket (`SO_DOMAIN`), or an error for a non-socket.
#[cfg(target_os = "linux")]
pub(crate) fn socket_domain(fd: RawFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Longest path a `sockaddr_un` holds (without the terminating NUL).
pub(crate) const UNIX_PATH_MAX: usize = 107;

/// Most descriptors sent or received in one message.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 16;

const CMSG_SPACE_FDS: usize = 128;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE_FDS]);

/// `sendmsg` with descriptors attached as `SCM_RIGHTS`.
pub(crate) fn send_with_fds(
    sock: RawFd,
    bufs: &[io::IoSlice<'_>],
    fds: &[RawFd],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors in one message",
        ));
    }
    let mut cbuf = CmsgBuf([0; CMSG_SPACE_FDS]);
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(c),
                payload as usize,
            );
        }
    }
    loop {
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `recvmsg` that collects `SCM_RIGHTS` descriptors (close-on-exec) into `fds`.
pub(crate) fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut cbuf = CmsgBuf([0; CMSG_SPACE_FDS]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CMSG_SPACE_FDS as _;
    let n = loop {
        #[cfg(target_os = "linux")]
        let flags = libc::MSG_CMSG_CLOEXEC;
        // Elsewhere received descriptors get FD_CLOEXEC right after (below).
        #[cfg(not(target_os = "linux"))]
        let flags = 0;
        let n = unsafe { libc::recvmsg(sock, &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let header = libc::CMSG_LEN(0) as usize;
                let count =
                    ((*c).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let mut fd: RawFd = 0;
                    std::ptr::copy_nonoverlapping(
                        data.add(i * std::mem::size_of::<RawFd>()),
                        &mut fd as *mut RawFd as *mut u8,
                        std::mem::size_of::<RawFd>(),
                    );
                    #[cfg(not(target_os = "linux"))]
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n)
}

/// `recvfrom` that reports the datagram's full length even when it did not
/// fit (`MSG_TRUNC`), so oversized datagrams are detected rather than cut silently.
pub(crate) fn recv_from_trunc(
    sock: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, socket2::SockAddr)> {
    // SAFETY: recvfrom writes at most `len` bytes of address into the storage.
    unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let n = libc::recvfrom(
                sock,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
                storage as *mut libc::sockaddr,
                len,
            );
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }
}

/// Linux delivers multicast to every socket bound to the port whose group
/// *any* socket on the host joined, unless `IP_MULTICAST_ALL` is off; turn it
/// off so a socket hears only the groups it joined itself.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_multicast_all(_fd: RawFd, _ipv6: bool, _on: bool) -> io::Result<()> {
    // Only Linux delivers other sockets' groups; nothing to turn off elsewhere.
    Ok(())
}

#[cfg(target_os = "linux")]
pub(crate) fn set_multicast_all(fd: RawFd, ipv6: bool, on: bool) -> io::Result<()> {
    let v: libc::c_int = on.into();
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_ALL)
    } else {
        (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL)
    };
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
