//! Moving received DATA payloads on to a socket without copying them
//! through user space: splice(2) through a pipe (Linux).
//!
//! Why: payloads travel raw inside frames (only headers and the NEW address
//! are encrypted), and the profiles of bulk transfers showed kernel copies
//! to and from user space in every tunnel process. For a channel relayed to
//! a socket (the server's caller, the client's endpoint), the link reader
//! reads a frame's header and moves its payload link -> pipe; the relay
//! moves it pipe -> socket. The pages are referenced, not copied.
//!
//! Every step has the copying path as its fallback: other systems, links
//! that are not TCP, consumers that are not sockets (bindings), small
//! payloads, a pipe that cannot take more. A [`Pipe`] only ever holds whole
//! pieces that a queue entry accounts for, in queue order.
//!
//! The other direction (socket -> pipe -> link) was built and measured
//! slower: see bench/results/NOTES.md.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;

/// Most bytes a pipe is asked to hold: many full frames, so the reader
/// keeps splicing while the relay drains it (1 MiB is the default limit an
/// unprivileged process may ask for; a refusal keeps the 64 KiB default).
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1024 * 1024;

/// The smallest pipe whose filling pauses the remote (see
/// [`Pipe::nearly_full`]).
const PAUSE_MIN_CAPACITY: usize = 512 * 1024;

/// What one move from a socket into a pipe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// This many bytes are now in the pipe.
    Moved(usize),
    /// The socket reached end of stream.
    Eof,
    /// The socket has bytes but the pipe takes no more now: use the copying
    /// path for them (the socket stays readable).
    PipeFull,
}

/// A non-blocking pipe and the count of bytes queued in it.
#[derive(Debug)]
pub struct Pipe {
    #[cfg(target_os = "linux")]
    read: std::os::fd::OwnedFd,
    #[cfg(target_os = "linux")]
    write: std::os::fd::OwnedFd,
    capacity: usize,
    /// Bytes moved in and not yet moved out.
    queued: AtomicUsize,
}

impl Pipe {
    /// Bytes in the pipe.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Room for one more piece of `len` bytes (counted, not promised: the
    /// kernel may still refuse, see [`Filled::PipeFull`]).
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.queued() + len <= self.capacity
    }

    /// Less than a quarter of a pipe of at least [`PAUSE_MIN_CAPACITY`]
    /// is free: time to pause the producer (a smaller pipe would make it
    /// pause at every frame).
    pub(crate) fn nearly_full(&self) -> bool {
        self.capacity >= PAUSE_MIN_CAPACITY && self.room() < self.capacity / 4
    }

    /// Room left by the count.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.queued())
    }

    /// Count `n` bytes moved out.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn moved_out(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use tokio::io::Interest;

    impl Pipe {
        /// A new pipe, sized to [`PIPE_SIZE`] when the system allows.
        pub fn new() -> io::Result<Pipe> {
            let mut fds: [libc::c_int; 2] = [0; 2];
            // SAFETY: `fds` is a writable array of two ints, as pipe2 needs.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let [read, write] = fds;
            // SAFETY: pipe2 succeeded: both descriptors are open and owned
            // by nothing else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(read), OwnedFd::from_raw_fd(write)) };
            let wanted = libc::c_int::try_from(PIPE_SIZE).unwrap_or(libc::c_int::MAX);
            // SAFETY: fcntl on a descriptor we own. A refusal (a user over
            // the system's pipe-size budget) keeps the default size.
            let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, wanted) };
            let capacity = if size > 0 {
                size as usize
            } else {
                // SAFETY: as above, a query.
                let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
                usize::try_from(size).unwrap_or(0)
            };
            Ok(Pipe {
                read,
                write,
                capacity,
                queued: AtomicUsize::new(0),
            })
        }

        /// Move up to `max` bytes from `socket` (which reported readiness)
        /// into the pipe. `WouldBlock`: the socket is empty (its readiness
        /// is cleared, as after a read that would block).
        pub fn fill_from(&self, socket: &TcpStream, max: usize) -> io::Result<Filled> {
            let max = max.min(self.room());
            if max == 0 {
                return Ok(Filled::PipeFull);
            }
            socket.try_io(Interest::READABLE, || {
                match splice(socket.as_raw_fd(), self.write.as_raw_fd(), max) {
                    Ok(0) => Ok(Filled::Eof),
                    Ok(n) => {
                        self.queued.fetch_add(n, Ordering::AcqRel);
                        Ok(Filled::Moved(n))
                    }
                    // The same error for "socket empty" and "pipe full":
                    // only the socket's queue tells them apart, and only
                    // the first may clear the readiness.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if bytes_waiting(socket) > 0 {
                            Ok(Filled::PipeFull)
                        } else {
                            Err(e)
                        }
                    }
                    Err(e) => Err(e),
                }
            })
        }

        /// Move up to `max` queued bytes from the pipe to `socket` (which
        /// reported readiness). `WouldBlock`: the socket's send buffer is
        /// full.
        pub fn drain_to(&self, socket: &TcpStream, max: usize) -> io::Result<usize> {
            let max = max.min(self.queued());
            if max == 0 {
                return Ok(0);
            }
            socket.try_io(Interest::WRITABLE, || {
                let n = splice(self.read.as_raw_fd(), socket.as_raw_fd(), max)?;
                self.moved_out(n);
                Ok(n)
            })
        }

        /// Copy up to `buf.len()` queued bytes out of the pipe: the way for
        /// a consumer that is not a socket.
        pub fn read_into(&self, buf: &mut [u8]) -> io::Result<usize> {
            let max = buf.len().min(self.queued());
            if max == 0 {
                return Ok(0);
            }
            // SAFETY: `buf` is valid for writes of `max <= buf.len()` bytes.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), max) };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            self.moved_out(n);
            Ok(n)
        }
    }

    /// Bytes in `socket`'s receive queue (0 when it cannot be told).
    fn bytes_waiting(socket: &TcpStream) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer we pass.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc == 0 {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: a system call on descriptors the caller keeps open, with
        // no offsets (both ends are streams).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "splice(2) is Linux-only")
    }

    // The same API, so callers need no cfg of their own; nothing here is
    // reached, because `SUPPORTED` keeps the reader on the copying path
    // and no pipe is ever made.
    impl Pipe {
        /// Always `Unsupported` on this system (callers then copy).
        pub fn new() -> io::Result<Pipe> {
            Err(unsupported())
        }

        /// Always `Unsupported` on this system.
        pub fn fill_from(&self, _: &TcpStream, _: usize) -> io::Result<Filled> {
            Err(unsupported())
        }

        /// Always `Unsupported` on this system.
        pub fn drain_to(&self, _: &TcpStream, _: usize) -> io::Result<usize> {
            Err(unsupported())
        }

        /// Always `Unsupported` on this system.
        pub fn read_into(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(unsupported())
        }
    }
}

/// Whether this system can splice at all.
pub const SUPPORTED: bool = cfg!(target_os = "linux");

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> io::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let a = TcpStream::connect(listener.local_addr()?).await?;
        let (b, _) = listener.accept().await?;
        Ok((a, b))
    }

    #[tokio::test]
    async fn bytes_cross_socket_pipe_socket_in_order() {
        let (mut src, from) = pair().await.unwrap();
        let (to, mut dst) = pair().await.unwrap();
        let pipe = Pipe::new().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                src.write_all(&data).await.unwrap();
                src.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        let pump = async {
            loop {
                from.readable().await.unwrap();
                match pipe.fill_from(&from, 64 * 1024) {
                    Ok(Filled::Eof) => break,
                    Ok(Filled::Moved(_)) | Ok(Filled::PipeFull) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("{e}"),
                }
                while pipe.queued() > 0 {
                    to.writable().await.unwrap();
                    match pipe.drain_to(&to, usize::MAX) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            drop(to);
        };
        let read = async { dst.read_to_end(&mut got).await.unwrap() };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(pump, read) })
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(got, data);
        assert_eq!(pipe.queued(), 0);
    }

    #[tokio::test]
    async fn a_full_pipe_is_told_apart_from_an_empty_socket() {
        let (mut src, from) = pair().await.unwrap();
        let pipe = Pipe::new().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        // More than the pipe holds.
        for _ in 0..(pipe.capacity / chunk.len() + 2) {
            src.write_all(&chunk).await.unwrap();
        }
        let mut full = false;
        for _ in 0..1000 {
            from.readable().await.unwrap();
            match pipe.fill_from(&from, usize::MAX) {
                Ok(Filled::PipeFull) => {
                    full = true;
                    break;
                }
                Ok(Filled::Moved(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(full, "the pipe never reported full");
        // Copying the pipe out makes room again.
        let mut buf = vec![0u8; 4096];
        assert_eq!(pipe.read_into(&mut buf).unwrap(), 4096);
        assert_eq!(buf, vec![7u8; 4096]);
        // An empty socket is WouldBlock, not full.
        let (_quiet, idle) = pair().await.unwrap();
        let empty = Pipe::new().unwrap();
        assert_eq!(
            empty.fill_from(&idle, 10).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
