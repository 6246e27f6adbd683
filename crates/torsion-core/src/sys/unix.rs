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
    #[cfg(not(target_vendor = "apple"))]
    {
        socket2::Socket::new(
            domain,
            socket2::Type::STREAM.nonblocking().cloexec(),
            protocol,
        )
    }
    #[cfg(target_vendor = "apple")]
    {
        // socket2 sets FD_CLOEXEC (and SO_NOSIGPIPE) itself on Apple targets.
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, protocol)?;
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
