//! The outgoing queue of one link: a FIFO per channel, drained round-robin
//! across channels, plus a small priority lane for control frames.
//!
//! Per-channel byte accounting drives back-pressure: a channel whose queue
//! grows over the high watermark stops taking writes until the writer task
//! has drained it to the low watermark. Control frames (PING, PONG, PAUSE,
//! RESUME) skip the channel queues so flow control is never stuck behind the
//! data it is trying to slow down; CLOSE and DATA share their channel's
//! queue, so a CLOSE always follows that channel's last DATA.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use super::frame::{ChannelId, Flow, FrameHeader, HEADER_SIZE};

/// Control frames that may wait before the link is considered flooded (a
/// peer that sends pings but never reads our pongs).
pub(crate) const MAX_CONTROL_FRAMES: usize = 4096;

/// One frame waiting to be written.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub header: FrameHeader,
    /// DATA payload (raw), or the plaintext of a protocol >= 2 NEW, which
    /// the writer encrypts as its own unit.
    pub payload: Bytes,
}

impl OutFrame {
    /// A frame without payload.
    pub fn bare(id: ChannelId, flow: Flow, extra: &[u8]) -> Self {
        OutFrame {
            header: FrameHeader::new(id, flow, 0, extra),
            payload: Bytes::new(),
        }
    }

    /// The reference's accounting size: header plus payload.
    pub(crate) fn size(&self) -> usize {
        HEADER_SIZE + self.payload.len()
    }
}

/// Watermarks of the outgoing side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watermarks {
    pub low: usize,
    pub high: usize,
    pub cap: usize,
}

#[derive(Default)]
struct ChannelOut {
    frames: VecDeque<OutFrame>,
    bytes: usize,
    /// Over high water and not yet drained to low water.
    under_water: bool,
    /// The remote sent PAUSE for this channel.
    remote_paused: bool,
    /// Whether the channel is in the round-robin list.
    scheduled: bool,
    /// CLOSE queued: nothing more may be added.
    closing: bool,
    /// Accounted bytes of DATA ever queued (saturating).
    sent: usize,
    /// The channel's writer, waiting for room.
    waker: Option<Waker>,
}

impl ChannelOut {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

#[derive(Default)]
struct Inner {
    control: VecDeque<OutFrame>,
    channels: HashMap<ChannelId, ChannelOut>,
    round_robin: VecDeque<ChannelId>,
    closed: bool,
}

/// Why a write could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The channel is closed (locally or by the remote) or the link is down.
    Closed,
}

/// Why a control frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlError {
    /// The link is down.
    Closed,
    /// Too many control frames wait: the peer is not reading.
    Flooded,
}

/// The queue shared by a link's channels and its writer task.
pub(crate) struct OutQueue {
    inner: Mutex<Inner>,
    marks: Watermarks,
    /// Wakes the writer task.
    ready: Notify,
}

impl OutQueue {
    pub fn new(marks: Watermarks) -> Self {
        OutQueue {
            inner: Mutex::new(Inner::default()),
            marks,
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue in a state
        // worse than losing the link; keep serving instead of propagating.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a channel, optionally with its first frame (the NEW).
    pub fn open(&self, id: ChannelId, first: Option<OutFrame>) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(PushError::Closed);
        }
        let mut channel = ChannelOut::default();
        if let Some(frame) = first {
            channel.bytes += frame.size();
            channel.frames.push_back(frame);
            channel.scheduled = true;
            inner.round_robin.push_back(id);
        }
        let scheduled = channel.scheduled;
        inner.channels.insert(id, channel);
        drop(inner);
        if scheduled {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queue DATA for `id` if the channel may send now; otherwise register
    /// `cx` to be woken when it may. The payload is built only when there is
    /// room, so a pending write costs nothing.
    pub fn poll_push_data(
        &self,
        cx: &mut Context<'_>,
        id: ChannelId,
        make_payload: impl FnOnce() -> Bytes,
    ) -> Poll<Result<usize, PushError>> {
        let mut inner = self.lock();
        if inner.closed {
            return Poll::Ready(Err(PushError::Closed));
        }
        let Inner {
            channels,
            round_robin,
            ..
        } = &mut *inner;
        let Some(channel) = channels.get_mut(&id) else {
            return Poll::Ready(Err(PushError::Closed));
        };
        if channel.closing {
            return Poll::Ready(Err(PushError::Closed));
        }
        if channel.under_water || channel.remote_paused || channel.bytes >= self.marks.cap {
            channel.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let payload = make_payload();
        let len = payload.len();
        let frame = OutFrame {
            header: FrameHeader::new(id, Flow::Data, len as u32, &[]),
            payload,
        };
        channel.bytes += frame.size();
        channel.sent = channel.sent.saturating_add(frame.size());
        channel.frames.push_back(frame);
        if channel.bytes > self.marks.high {
            channel.under_water = true;
        }
        let notify = !channel.scheduled;
        if notify {
            channel.scheduled = true;
            round_robin.push_back(id);
        }
        drop(inner);
        if notify {
            self.ready.notify_one();
        }
        Poll::Ready(Ok(len))
    }

    /// True when a write to `id` would be accepted now (used by bindings to
    /// tell their host when to pause producing).
    pub fn is_writable(&self, id: ChannelId) -> bool {
        let inner = self.lock();
        inner.channels.get(&id).is_some_and(|c| {
            !c.closing && !c.under_water && !c.remote_paused && c.bytes < self.marks.cap
        })
    }

    /// Queue CLOSE behind the channel's data; later writes fail. Returns
    /// false if the channel was already closing or gone.
    pub fn close(&self, id: ChannelId) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        let Inner {
            channels,
            round_robin,
            ..
        } = &mut *inner;
        let Some(channel) = channels.get_mut(&id) else {
            return false;
        };
        if channel.closing {
            return false;
        }
        channel.closing = true;
        let frame = OutFrame::bare(id, Flow::Close, &[]);
        channel.bytes += frame.size();
        channel.frames.push_back(frame);
        channel.wake();
        let notify = !channel.scheduled;
        if notify {
            channel.scheduled = true;
            round_robin.push_back(id);
        }
        drop(inner);
        if notify {
            self.ready.notify_one();
        }
        true
    }

    /// Drop a channel and everything queued for it (the remote closed it).
    pub fn remove(&self, id: ChannelId) {
        let mut inner = self.lock();
        if let Some(mut channel) = inner.channels.remove(&id) {
            channel.wake();
        }
        // A stale round-robin entry is skipped by the writer.
    }

    /// The remote paused or resumed this channel.
    pub fn set_remote_paused(&self, id: ChannelId, paused: bool) -> bool {
        let mut inner = self.lock();
        match inner.channels.get_mut(&id) {
            Some(channel) => {
                channel.remote_paused = paused;
                if !paused {
                    channel.wake();
                }
                true
            }
            None => false,
        }
    }

    /// Whether the remote has paused this channel.
    pub fn remote_paused(&self, id: ChannelId) -> bool {
        self.lock()
            .channels
            .get(&id)
            .is_some_and(|c| c.remote_paused)
    }

    /// Bytes queued for `id`.
    pub fn queued_bytes(&self, id: ChannelId) -> usize {
        self.lock().channels.get(&id).map_or(0, |c| c.bytes)
    }

    /// Accounted bytes of DATA ever queued for `id` (header plus payload per
    /// frame, the reference's measure); 0 once the channel is gone.
    pub fn sent_bytes(&self, id: ChannelId) -> usize {
        self.lock().channels.get(&id).map_or(0, |c| c.sent)
    }

    /// Queue a control frame ahead of all channel data.
    pub fn push_control(&self, frame: OutFrame) -> Result<(), ControlError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(ControlError::Closed);
        }
        if inner.control.len() >= MAX_CONTROL_FRAMES {
            return Err(ControlError::Flooded);
        }
        inner.control.push_back(frame);
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// Move the next frames to `batch`, control frames first, then one frame
    /// per channel per round, up to `max_frames` frames or about `max_bytes`
    /// bytes. Returns false once the queue is closed.
    pub fn take_batch(
        &self,
        batch: &mut Vec<OutFrame>,
        max_frames: usize,
        max_bytes: usize,
    ) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        let mut bytes = 0usize;
        while batch.len() < max_frames && bytes < max_bytes {
            if let Some(frame) = inner.control.pop_front() {
                bytes += frame.size();
                batch.push(frame);
                continue;
            }
            let Some(id) = inner.round_robin.pop_front() else {
                break;
            };
            let Some(channel) = inner.channels.get_mut(&id) else {
                continue;
            };
            let Some(frame) = channel.frames.pop_front() else {
                channel.scheduled = false;
                continue;
            };
            channel.bytes = channel.bytes.saturating_sub(frame.size());
            if channel.under_water && channel.bytes <= self.marks.low {
                channel.under_water = false;
                channel.wake();
            }
            let is_close = frame.header.flow == Flow::Close;
            let more = !channel.frames.is_empty();
            bytes += frame.size();
            batch.push(frame);
            if is_close {
                inner.channels.remove(&id);
            } else if more {
                inner.round_robin.push_back(id);
            } else if let Some(channel) = inner.channels.get_mut(&id) {
                channel.scheduled = false;
            }
        }
        true
    }

    /// Wait until frames may be ready.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Stop accepting frames and wake every waiting writer.
    pub fn close_all(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.control.clear();
        inner.round_robin.clear();
        for (_, mut channel) in inner.channels.drain() {
            channel.wake();
        }
        drop(inner);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn queue() -> OutQueue {
        OutQueue::new(Watermarks {
            low: 100,
            high: 200,
            cap: 1000,
        })
    }

    fn push(
        q: &OutQueue,
        cx: &mut Context<'_>,
        id: ChannelId,
        len: usize,
    ) -> Poll<Result<usize, PushError>> {
        q.poll_push_data(cx, id, || Bytes::from(vec![0u8; len]))
    }

    #[test]
    fn round_robin_across_channels() {
        let q = queue();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0))).into();
        let mut cx = Context::from_waker(&waker);
        let a = ChannelId([1; 16]);
        let b = ChannelId([2; 16]);
        q.open(a, None).unwrap();
        q.open(b, None).unwrap();
        for _ in 0..3 {
            assert!(push(&q, &mut cx, a, 10).is_ready());
        }
        assert!(push(&q, &mut cx, b, 10).is_ready());
        let mut batch = Vec::new();
        assert!(q.take_batch(&mut batch, 100, usize::MAX));
        let order: Vec<u8> = batch.iter().map(|f| f.header.id.0[0]).collect();
        assert_eq!(order, vec![1, 2, 1, 1], "b must not wait behind all of a");
    }

    #[test]
    fn back_pressure_with_hysteresis() {
        let q = queue();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = counter.clone().into();
        let mut cx = Context::from_waker(&waker);
        let id = ChannelId([1; 16]);
        q.open(id, None).unwrap();
        // 3 x (32 + 50) = 246 > high 200: under water after the third.
        for _ in 0..3 {
            assert!(push(&q, &mut cx, id, 50).is_ready());
        }
        assert!(push(&q, &mut cx, id, 50).is_pending());
        assert!(!q.is_writable(id));
        // Draining one frame leaves 164 > low 100: still pending.
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 1, usize::MAX);
        assert!(push(&q, &mut cx, id, 50).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        // Down to 82 <= 100: the writer is woken and may write again.
        batch.clear();
        q.take_batch(&mut batch, 1, usize::MAX);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(push(&q, &mut cx, id, 50).is_ready());
    }

    #[test]
    fn remote_pause_blocks_and_resume_wakes() {
        let q = queue();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = counter.clone().into();
        let mut cx = Context::from_waker(&waker);
        let id = ChannelId([1; 16]);
        q.open(id, None).unwrap();
        assert!(q.set_remote_paused(id, true));
        assert!(push(&q, &mut cx, id, 1).is_pending());
        q.set_remote_paused(id, false);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(push(&q, &mut cx, id, 1).is_ready());
    }

    #[test]
    fn close_follows_data_and_ends_the_channel() {
        let q = queue();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0))).into();
        let mut cx = Context::from_waker(&waker);
        let id = ChannelId([1; 16]);
        q.open(id, None).unwrap();
        assert!(push(&q, &mut cx, id, 5).is_ready());
        assert!(q.close(id));
        assert!(!q.close(id), "second close is a no-op");
        assert_eq!(
            push(&q, &mut cx, id, 5),
            Poll::Ready(Err(PushError::Closed))
        );
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 10, usize::MAX);
        let flows: Vec<Flow> = batch.iter().map(|f| f.header.flow).collect();
        assert_eq!(flows, vec![Flow::Data, Flow::Close]);
        assert_eq!(q.queued_bytes(id), 0);
    }

    #[test]
    fn control_frames_jump_the_queue_and_are_bounded() {
        let q = queue();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0))).into();
        let mut cx = Context::from_waker(&waker);
        let id = ChannelId([1; 16]);
        q.open(id, None).unwrap();
        assert!(push(&q, &mut cx, id, 5).is_ready());
        q.push_control(OutFrame::bare(id, Flow::Pause, &[]))
            .unwrap();
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 10, usize::MAX);
        assert_eq!(batch[0].header.flow, Flow::Pause);
        for _ in 0..MAX_CONTROL_FRAMES {
            q.push_control(OutFrame::bare(id, Flow::Ping, b"pong"))
                .unwrap();
        }
        assert_eq!(
            q.push_control(OutFrame::bare(id, Flow::Ping, b"pong")),
            Err(ControlError::Flooded)
        );
    }

    #[test]
    fn remote_close_drops_queued_frames() {
        let q = queue();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0))).into();
        let mut cx = Context::from_waker(&waker);
        let id = ChannelId([1; 16]);
        q.open(id, None).unwrap();
        assert!(push(&q, &mut cx, id, 5).is_ready());
        q.remove(id);
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 10, usize::MAX);
        assert!(batch.is_empty());
        q.close_all();
        assert!(!q.take_batch(&mut batch, 10, usize::MAX));
    }
}
