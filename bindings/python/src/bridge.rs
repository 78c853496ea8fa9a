//! Channels served straight into asyncio: the Rust half of
//! `snitun_rs.client._transport.ChannelTransport`.
//!
//! One tokio task per channel (the pump) moves bytes between the tunnel
//! channel and a [`Bridge`], the state both languages share:
//! - channel → Python: the pump reads ahead up to [`READ_AHEAD`] bytes and
//!   asks the event loop (through the `wake` callable the transport
//!   attached, a `call_soon_threadsafe` partial) to run the transport's
//!   `_wake`, which copies the bytes straight into the protocol's buffer.
//!   One wake-up is in flight at a time, however many frames arrive, so the
//!   loop is crossed once per batch rather than once per frame. While the
//!   protocol has paused reading, nothing is scheduled; once the read-ahead
//!   is full the pump stops reading, the channel's incoming queue fills and
//!   the multiplexer sends PAUSE to the server as usual.
//! - Python → channel: `write()` only appends to the bridge (never blocks
//!   the loop) and wakes the pump, which queues the bytes on the channel as
//!   it takes them. Past [`WRITE_HIGH`] bytes not yet taken, `write()`
//!   reports "over water" and the transport pauses its protocol; the pump
//!   schedules a wake-up to resume it once everything has been taken.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use snitun::Channel;

/// Bytes read from the channel ahead of Python (two of `SSLProtocol`'s
/// 256 KiB buffers): enough to keep the loop busy for a whole callback,
/// small next to the multiplexer's 2 MiB incoming high water mark.
const READ_AHEAD: usize = 512 * 1024;
/// Bytes written by Python and not yet taken by the channel beyond which
/// the transport tells its protocol to pause writing (asyncio's default
/// high water mark is 64 KiB; the channel below queues up to 1 MiB more).
const WRITE_HIGH: usize = 256 * 1024;
/// How long a channel Python closed may wait for the server to take the
/// last data before CLOSE goes out anyway (see
/// `Channel::close_after_delivery`).
const CLOSE_SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// How the channel ended, as seen from Python.
#[derive(Debug, Clone)]
enum End {
    /// The server closed the channel: deliver what is left, then EOF.
    Closed,
    /// The channel died (link lost, overflow): the reason.
    Aborted(String),
}

/// What Python asked for the channel's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    Open,
    /// `close()`: send what was written, then CLOSE.
    Close,
    /// `abort()`: drop what was not sent, CLOSE now.
    Abort,
}

#[derive(Debug)]
struct State {
    incoming: VecDeque<Bytes>,
    incoming_len: usize,
    end: Option<End>,
    /// The transport's protocol paused reading (or the transport has no
    /// protocol yet): no wake-ups for data.
    read_paused: bool,
    /// A wake-up is scheduled and has not finished yet.
    scheduled: bool,
    /// The `_wake` scheduler; None until the transport attaches, and again
    /// once the loop has refused a call (it is closed).
    wake: Option<Arc<Py<PyAny>>>,
    outgoing: VecDeque<Bytes>,
    outgoing_len: usize,
    /// `write()` reported over water and the protocol has not been told
    /// to resume yet.
    write_paused: bool,
    /// Everything written has been taken: the protocol may resume writing.
    resume_due: bool,
    /// Writes cannot reach the channel any more (it ended).
    write_closed: bool,
    shutdown: Shutdown,
    /// The pump, to wake when Python wrote, read, closed or resumed.
    pump: Option<Waker>,
}

/// The state shared by the pump task and the Python transport.
#[derive(Debug)]
pub(crate) struct Bridge {
    peer_ip: IpAddr,
    state: Mutex<State>,
}

impl Bridge {
    pub(crate) fn new(peer_ip: IpAddr) -> Arc<Bridge> {
        Arc::new(Bridge {
            peer_ip,
            state: Mutex::new(State {
                incoming: VecDeque::new(),
                incoming_len: 0,
                end: None,
                read_paused: true,
                scheduled: false,
                wake: None,
                outgoing: VecDeque::new(),
                outgoing_len: 0,
                write_paused: false,
                resume_due: false,
                write_closed: false,
                shutdown: Shutdown::Open,
                pump: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether Python has something to do now; claims the wake-up if so.
    fn claim_wake(state: &mut State) -> Option<Arc<Py<PyAny>>> {
        if state.scheduled {
            return None;
        }
        let data = !state.read_paused && (!state.incoming.is_empty() || state.end.is_some());
        let aborted = matches!(state.end, Some(End::Aborted(_)));
        if !(data || aborted || state.resume_due) {
            return None;
        }
        let wake = state.wake.clone()?;
        state.scheduled = true;
        Some(wake)
    }

    /// Ask the loop to run the transport's `_wake` (from the pump).
    fn schedule(self: &Arc<Self>, wake: Arc<Py<PyAny>>) {
        // None: the interpreter is exiting, there is no one to tell.
        let sent =
            crate::runtime::with_python(|py| wake.call0(py).map(drop).map_err(|e| e.to_string()))
                .unwrap_or_else(|| Err("the interpreter is exiting".into()));
        if let Err(err) = sent {
            // The loop is closed: nobody will read or write this channel
            // again, so end it instead of queueing for no one.
            tracing::debug!(caller = %self.peer_ip, "event loop gone, closing channel: {err}");
            let mut state = self.lock();
            state.wake = None;
            state.scheduled = false;
            state.shutdown = Shutdown::Abort;
        }
    }

    fn wake_pump(state: &mut State) {
        if let Some(waker) = state.pump.take() {
            waker.wake();
        }
    }
}

/// Serve `channel` for the Python transport attached to `bridge`, until
/// the channel ends or Python closes it.
pub(crate) async fn pump(mut channel: Channel, bridge: Arc<Bridge>) {
    // Dropped when the channel is over, or when the session cancels this
    // future: either way Python must hear of the end.
    let _end = EndGuard(bridge.clone());
    let mut sending = Bytes::new();
    let mut reading = true;
    let shutdown =
        poll_fn(|cx| pump_step(cx, &mut channel, &bridge, &mut sending, &mut reading)).await;
    match shutdown {
        Shutdown::Close => channel.close_after_delivery(CLOSE_SETTLE_LIMIT).await,
        Shutdown::Abort | Shutdown::Open => channel.close(),
    }
}

/// Marks the bridge ended (an abnormal end unless one was recorded) and
/// tells Python.
struct EndGuard(Arc<Bridge>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let wake = {
            let mut state = self.0.lock();
            state.write_closed = true;
            state.outgoing.clear();
            state.outgoing_len = 0;
            if state.end.is_none() {
                state.end = Some(match state.shutdown {
                    Shutdown::Open => End::Aborted("the tunnel session ended".into()),
                    Shutdown::Close | Shutdown::Abort => End::Closed,
                });
            }
            Bridge::claim_wake(&mut state)
        };
        if let Some(wake) = wake {
            self.0.schedule(wake);
        }
    }
}

/// One turn of the pump: move what can move, then wait for the channel or
/// for Python. Ready with how Python ended the channel (`Open` when the
/// channel ended on its own).
fn pump_step(
    cx: &mut Context<'_>,
    channel: &mut Channel,
    bridge: &Arc<Bridge>,
    sending: &mut Bytes,
    reading: &mut bool,
) -> Poll<Shutdown> {
    let mut wakes = Vec::new();
    let result = loop {
        let mut state = bridge.lock();
        state.pump = Some(cx.waker().clone());
        if state.shutdown == Shutdown::Abort {
            break Poll::Ready(Shutdown::Abort);
        }

        // Python → channel.
        let mut write_failed = None;
        while !state.write_closed {
            if sending.is_empty() {
                match state.outgoing.pop_front() {
                    Some(next) => *sending = next,
                    None => break,
                }
            }
            let before = sending.len();
            drop(state);
            let polled = channel.poll_send(cx, sending);
            state = bridge.lock();
            state.outgoing_len = state.outgoing_len.saturating_sub(before - sending.len());
            match polled {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    write_failed = Some(err);
                    break;
                }
                Poll::Pending => break,
            }
        }
        if let Some(err) = write_failed {
            tracing::debug!(caller = %bridge.peer_ip, "channel refuses writes: {err}");
            state.write_closed = true;
            state.outgoing.clear();
            state.outgoing_len = 0;
            sending.clear();
        }
        let all_sent = sending.is_empty() && state.outgoing.is_empty();
        if all_sent && state.write_paused {
            state.write_paused = false;
            state.resume_due = true;
        }
        if state.shutdown == Shutdown::Close && (all_sent || state.write_closed) {
            break Poll::Ready(Shutdown::Close);
        }

        // Channel → Python.
        let mut progressed = false;
        while *reading && state.incoming_len < READ_AHEAD {
            drop(state);
            let polled = channel.poll_recv(cx);
            state = bridge.lock();
            match polled {
                Poll::Ready(Ok(Some(chunk))) => {
                    state.incoming_len += chunk.len();
                    state.incoming.push_back(chunk);
                    progressed = true;
                }
                Poll::Ready(Ok(None)) => {
                    state.end = Some(End::Closed);
                    *reading = false;
                }
                Poll::Ready(Err(err)) => {
                    state.end = Some(End::Aborted(abort_reason(&err)));
                    *reading = false;
                }
                Poll::Pending => break,
            }
        }
        if let Some(wake) = Bridge::claim_wake(&mut state) {
            wakes.push(wake);
        }
        let finished = !*reading;
        drop(state);
        if finished {
            // The channel is over: what is left is Python's to take from
            // the bridge; nothing more can be sent.
            break Poll::Ready(Shutdown::Open);
        }
        if !progressed {
            break Poll::Pending;
        }
    };
    for wake in wakes {
        bridge.schedule(wake);
    }
    if result.is_pending() && bridge.lock().shutdown == Shutdown::Abort {
        // The loop refused the wake-up while we were scheduling it.
        return Poll::Ready(Shutdown::Abort);
    }
    result
}

fn abort_reason(err: &io::Error) -> String {
    err.to_string()
}

/// One tunnel channel as the Python transport sees it (internal: used by
/// `snitun_rs.client._transport`).
#[pyclass(frozen, module = "snitun_rs._snitun_rs")]
pub(crate) struct NativeChannel {
    pub(crate) bridge: Arc<Bridge>,
}

#[pymethods]
impl NativeChannel {
    /// The caller's IP address, as the server announced it.
    #[getter]
    fn peer_ip(&self) -> String {
        self.bridge.peer_ip.to_string()
    }

    /// Set the callable that schedules the transport's `_wake` on the
    /// event loop (thread-safe, no arguments). Returns True if there is
    /// work already (the caller schedules `_wake` itself then).
    fn attach(&self, wake: Py<PyAny>) -> bool {
        let mut state = self.bridge.lock();
        state.wake = Some(Arc::new(wake));
        if state.scheduled {
            return false;
        }
        let ready = Bridge::claim_wake(&mut state).is_some();
        state.scheduled = ready;
        ready
    }

    /// Stop wake-ups for good (the transport is done with the channel).
    fn detach(&self) {
        self.bridge.lock().wake = None;
    }

    /// Bytes received and not yet read.
    #[getter]
    fn readable(&self) -> usize {
        self.bridge.lock().incoming_len
    }

    /// Copy received bytes into `buffer` (a writable, contiguous bytes-like
    /// object, e.g. the memoryview of a protocol's `get_buffer()`); returns
    /// how many were copied.
    fn read_into(&self, _py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let buffer = PyBuffer::<u8>::get(buffer)?;
        if buffer.readonly() || !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "read_into needs a writable contiguous buffer",
            ));
        }
        let len = buffer.len_bytes();
        let ptr = buffer.buf_ptr().cast::<u8>();
        if ptr.is_null() || len == 0 {
            return Ok(0);
        }
        // SAFETY: the buffer is exported to us (so its memory stays put and
        // cannot be resized until `buffer` is dropped at the end of this
        // call), writable and contiguous over `len` bytes; we hold the GIL
        // and run no Python code while the slice lives, so nothing else
        // reads or writes it meanwhile.
        let target: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let mut state = self.bridge.lock();
        let was_full = state.incoming_len >= READ_AHEAD;
        let mut copied = 0;
        while copied < target.len() {
            let Some(chunk) = state.incoming.front_mut() else {
                break;
            };
            let take = chunk.len().min(target.len() - copied);
            let head = chunk.split_to(take);
            if let Some(into) = target.get_mut(copied..copied + take) {
                into.copy_from_slice(&head);
            }
            copied += take;
            if chunk.is_empty() {
                state.incoming.pop_front();
            }
        }
        state.incoming_len -= copied;
        if was_full && state.incoming_len < READ_AHEAD {
            Bridge::wake_pump(&mut state);
        }
        Ok(copied)
    }

    /// Take up to `limit` received bytes as a `bytes` object (for plain
    /// protocols that want `data_received`).
    fn read<'py>(&self, py: Python<'py>, limit: usize) -> Bound<'py, pyo3::types::PyBytes> {
        let mut state = self.bridge.lock();
        let was_full = state.incoming_len >= READ_AHEAD;
        let take = limit.min(state.incoming_len);
        let mut out = Vec::with_capacity(take);
        while out.len() < take {
            let Some(chunk) = state.incoming.front_mut() else {
                break;
            };
            let n = chunk.len().min(take - out.len());
            out.extend_from_slice(&chunk.split_to(n));
            if chunk.is_empty() {
                state.incoming.pop_front();
            }
        }
        state.incoming_len -= out.len();
        if was_full && state.incoming_len < READ_AHEAD {
            Bridge::wake_pump(&mut state);
        }
        drop(state);
        pyo3::types::PyBytes::new(py, &out)
    }

    /// How the channel ended, once everything received has been read (or
    /// at once for an abnormal end): None while open or data is left, ""
    /// for a clean close, else the reason it died.
    fn ended(&self) -> Option<String> {
        let state = self.bridge.lock();
        match &state.end {
            Some(End::Aborted(why)) => Some(why.clone()),
            Some(End::Closed) if state.incoming.is_empty() => Some(String::new()),
            _ => None,
        }
    }

    /// Whether the protocol may resume writing (clears the signal).
    fn take_resume(&self) -> bool {
        std::mem::take(&mut self.bridge.lock().resume_due)
    }

    /// Pause or resume wake-ups for received data.
    fn set_read_paused(&self, paused: bool) {
        let mut state = self.bridge.lock();
        state.read_paused = paused;
        Bridge::wake_pump(&mut state);
    }

    /// End of a `_wake`: returns True if more work came meanwhile, in which
    /// case the wake-up stays claimed and the caller schedules `_wake`
    /// again.
    fn finish_wake(&self) -> bool {
        let mut state = self.bridge.lock();
        state.scheduled = false;
        let again = Bridge::claim_wake(&mut state).is_some();
        state.scheduled = again;
        again
    }

    /// Claim a wake-up if there is work (after `resume_reading`): True if
    /// the caller must schedule `_wake`.
    fn claim(&self) -> bool {
        let mut state = self.bridge.lock();
        let ready = Bridge::claim_wake(&mut state).is_some();
        state.scheduled = state.scheduled || ready;
        ready
    }

    /// Queue `data` (bytes, bytearray, memoryview: any contiguous buffer)
    /// for the channel; never blocks. Returns True when the bytes not yet
    /// taken by the channel are over the high water mark (the transport
    /// pauses its protocol; `take_resume` says when to resume). Data
    /// written after the channel ended is dropped.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        let data = match data.cast::<pyo3::types::PyBytes>() {
            Ok(bytes) => Bytes::copy_from_slice(bytes.as_bytes()),
            Err(_) => Bytes::from(PyBuffer::<u8>::get(data)?.to_vec(py)?),
        };
        let mut state = self.bridge.lock();
        if state.write_closed || state.shutdown != Shutdown::Open || data.is_empty() {
            return Ok(false);
        }
        state.outgoing_len += data.len();
        state.outgoing.push_back(data);
        Bridge::wake_pump(&mut state);
        if state.outgoing_len > WRITE_HIGH {
            state.write_paused = true;
            state.resume_due = false;
        }
        Ok(state.write_paused)
    }

    /// Bytes written and not yet taken by the channel.
    #[getter]
    fn write_buffer_size(&self) -> usize {
        self.bridge.lock().outgoing_len
    }

    /// Close after sending what was written (CLOSE follows the data).
    fn close(&self) {
        let mut state = self.bridge.lock();
        if state.shutdown == Shutdown::Open {
            state.shutdown = Shutdown::Close;
        }
        Bridge::wake_pump(&mut state);
    }

    /// Close now, dropping what was not sent.
    fn abort(&self) {
        let mut state = self.bridge.lock();
        state.shutdown = Shutdown::Abort;
        state.outgoing.clear();
        state.outgoing_len = 0;
        Bridge::wake_pump(&mut state);
    }
}
