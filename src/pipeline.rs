//! The segmented write pipeline behind [`AsyncAtomicFile`]: small writes
//! gather in memory; a full segment goes to the pool while the next one
//! fills. Pure state machine: generic over the sink (any `io::Write`) and
//! the pool, so the tests drive it with a fake pool that they step by
//! hand, and a loom model (`loom_tests`) runs the job on a thread of its
//! own, under every interleaving with the caller.
//!
//! The memory of two buffers (`2 x buffer_size`) is cut into `segments`
//! buffers of `2 x buffer_size / segments` bytes each: two of
//! `buffer_size` (double buffering), or more, smaller ones. A job on the
//! pool writes one segment, then every segment queued behind it meanwhile,
//! in order, handing each written one back for the next fill: while the
//! caller keeps up, one hop carries many segments and the writing thread
//! never waits for a wake-up between them. The caller fills segments while
//! any is free and waits only when all are out (one being written, the
//! others queued); it is woken when the first comes back, while the job
//! still has the others to write. More segments keep more of the same
//! memory queued for the job while the caller wakes up, but make each
//! write call smaller, cost a hand-off (and, for a caller ahead of the
//! disk, a wake-up) each, and shrink the largest file that the commit's
//! hop writes alone from a buffer to a segment.
//!
//! [`AsyncAtomicFile`]: crate::AsyncAtomicFile

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use sync::{Arc, Condvar, Mutex, MutexGuard};

/// The hand-off's primitives: std's, or loom's in the model check of the
/// hand-off (`--cfg loom`, in tests only, as tokio does), so that loom sees
/// every lock, wait and notify between the caller and the job.
mod sync {
    #[cfg(all(test, loom))]
    pub(super) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    #[cfg(not(all(test, loom)))]
    pub(super) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
}

/// How many segments a file's two buffers are cut into, unless the hidden
/// `__private::set_write_segments` says otherwise (for the benches that
/// pick this default: issue #22's W1b in benches/peers.rs). Two, plain
/// double buffering: in W1b (256 MiB into the page cache, 1 MiB buffers)
/// 4 segments tied with 2, and 8 and 16 were slower (smaller write calls,
/// a wake-up per segment); the job never ran dry waiting for the caller.
pub(crate) const DEFAULT_SEGMENTS: usize = 2;

/// How long a job that has written its segment waits for the next one
/// before it ends, once the caller has shown it keeps up (a segment was
/// queued while the job wrote). Such a caller refills a segment far faster
/// than the disk or the page cache takes one, but only after a wake-up,
/// which on a busy or virtual machine can take hundreds of microseconds:
/// without the wait the chain of segments breaks and each costs a hop
/// again. A slower caller (fed by the network, say) gets no wait, so its
/// jobs hold no pool thread idle. A caller that is done (flush, commit,
/// drop) ends the wait at once.
const LINGER: Duration = Duration::from_millis(1);

/// Somewhere to run blocking jobs: the Tokio blocking pool, or a test fake.
pub(crate) trait Pool {
    /// How long a write job waits for the next segment; see [`LINGER`].
    const LINGER: Duration = LINGER;

    /// Resolves to the job's result, or an error if the job panicked or
    /// never ran.
    type Handle<T: Send + 'static>: Future<Output = io::Result<T>> + Unpin + Send + Sync;

    /// Starts `job`.
    fn spawn<T, F>(job: F) -> Self::Handle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;
}

/// What a write job hands back: the sink, its last segment emptied, the
/// outcome.
type Job<W> = (W, Vec<u8>, io::Result<()>);

/// Between the caller and a running job: the segments queued for the job,
/// and the written ones handed back.
#[derive(Default)]
struct Handoff {
    /// Full segments for the job to write after its current one, in order.
    queued: VecDeque<Vec<u8>>,
    /// Segments the job has written, emptied, for the caller to fill.
    free: Vec<Vec<u8>>,
    /// False once the job is ending (nothing more to write, an error) or
    /// the caller has closed the queue: nothing may be queued any more, and
    /// the job does not wait for more.
    accepting: bool,
    /// The caller, waiting for a segment in `free`.
    waker: Option<Waker>,
}

/// Repositions the sink (it is `Seek`): kept with a pending seek, so that
/// the job that carries it out needs no `Seek` bound of its own.
type SeekFn<W> = fn(&mut W, u64) -> io::Result<()>;

/// The hand-off, and the job waiting for `queued` to fill.
type Shared = Arc<(Mutex<Handoff>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Handoff> {
    // Nothing panics while holding the lock; a poisoned one is still whole.
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tells the job that nothing more will be queued, so that it ends as soon
/// as its current segment and those queued are written.
fn close(shared: &Shared) {
    let mut handoff = lock(shared);
    handoff.accepting = false;
    drop(handoff);
    shared.1.notify_all();
}

enum State<W: Send + 'static, P: Pool> {
    /// No job in flight. `None` once the sink is gone: taken, or lost with a
    /// job that panicked (its drop ran on the pool).
    Idle(Option<W>),
    /// A job owns the sink and a segment.
    Busy(P::Handle<Job<W>>, Shared),
}

/// The pipeline. `segments` segments at most, each in one of these places
/// at a time: filling (unless `lent`), a spare, in the job, queued or
/// handed back; or not allocated yet.
pub(crate) struct Pipeline<W: Send + 'static, P: Pool> {
    state: State<W, P>,
    /// The segment being filled.
    buf: Vec<u8>,
    /// True when every segment is out (the filled one went to the queue)
    /// and the caller waits for the job to hand one back before writing
    /// more: `buf` is then no segment, just empty.
    lent: bool,
    /// Emptied segments, handed back by jobs, to fill next.
    spares: Vec<Vec<u8>>,
    /// Segments not allocated yet: taken only when no spare is left, so
    /// that a job that keeps up costs two segments' memory, not all of
    /// them.
    unallocated: usize,
    /// The size of a segment.
    capacity: usize,
    /// How many segments there are.
    segments: usize,
    /// The first error, kept whole: every later call fails with its kind,
    /// and `take_parts` returns it.
    error: Option<io::Error>,
    /// Where the next byte accepted goes in the file, and the file's
    /// length, both counting the bytes still buffered. Kept here, since no
    /// one else writes the temp file: a seek needs no syscall to know
    /// where it lands.
    position: u64,
    len: u64,
    /// A seek accepted by `start_seek` and not yet sent to the pool, which
    /// must happen before another byte is buffered: the segment being
    /// filled holds the bytes that go before it.
    seek_to: Option<(u64, SeekFn<W>)>,
    /// A seek job is in flight: `poll_complete` waits for it.
    seeking: bool,
    /// Bytes accepted in all.
    accepted: u64,
}

impl<W, P> Pipeline<W, P>
where
    W: Write + Send + 'static,
    P: Pool,
{
    /// A pipeline with the memory of two buffers of `buffer_size` bytes
    /// (0 counts as 1), cut into `segments` segments: at least two (one
    /// filling while one is written), and at most one per byte.
    pub(crate) fn new(sink: W, buffer_size: usize, segments: usize) -> Self {
        let buffer_size = buffer_size.max(1);
        let segments = segments.clamp(2, buffer_size.saturating_mul(2));
        // 2 x buffer_size / segments, at least 1 (segments <= 2 x
        // buffer_size) and at most buffer_size (segments >= 2): fits.
        let capacity = (2 * buffer_size as u128 / segments as u128) as usize;
        Pipeline {
            state: State::Idle(Some(sink)),
            buf: Vec::new(),
            lent: false,
            spares: Vec::new(),
            unallocated: segments - 1,
            capacity,
            segments,
            error: None,
            position: 0,
            len: 0,
            seek_to: None,
            seeking: false,
            accepted: 0,
        }
    }

    fn sticky(&self) -> Option<io::Error> {
        self.error.as_ref().map(crate::error::copy_io_error)
    }

    fn fail(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }

    /// A segment to fill: a spare (already allocated), else one not
    /// allocated yet; `None` when every segment is out.
    fn next_segment(&mut self) -> Option<Vec<u8>> {
        if let Some(buf) = self.spares.pop() {
            return Some(buf);
        }
        if self.unallocated > 0 {
            self.unallocated -= 1;
            return Some(Vec::new());
        }
        None
    }

    /// Accepts bytes into the segment being filled; waits only when every
    /// segment is out.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.sticky() {
            return Poll::Ready(Err(e));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.seek_to.is_some() {
            ready!(self.poll_send_seek(cx));
            if let Some(e) = self.sticky() {
                return Poll::Ready(Err(e));
            }
        }
        if self.buf.len() >= self.capacity {
            ready!(self.poll_send(cx));
        }
        if self.lent {
            ready!(self.poll_reclaim(cx));
        }
        if let Some(e) = self.sticky() {
            return Poll::Ready(Err(e));
        }
        let n = data.len().min(self.capacity - self.buf.len());
        if self.buf.capacity() - self.buf.len() < n {
            // Grow geometrically up to the capacity, never past it: a huge
            // `buffer_size` costs only what is written.
            let want = (self.buf.len() + n)
                .max(self.buf.capacity() * 2)
                .min(self.capacity);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        self.position += n as u64;
        self.accepted += n as u64;
        self.len = self.len.max(self.position);
        if self.buf.len() == self.capacity {
            // Hand the full segment over now if that needs no waiting, so
            // it is written while the caller produces the next one. Any
            // error surfaces on the next call: these `n` bytes are accepted.
            let _ = self.poll_send(cx);
        }
        Poll::Ready(Ok(n))
    }

    /// Hands the full segment over: to a new job when idle, else queued
    /// behind the running job, taking back the segments it has written
    /// meanwhile. Waits only for a job that is ending.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.error.is_some() {
                return Poll::Ready(());
            }
            let State::Busy(_, shared) = &self.state else {
                self.submit();
                return Poll::Ready(());
            };
            {
                let mut handoff = lock(shared);
                if handoff.accepting {
                    handoff.queued.push_back(std::mem::take(&mut self.buf));
                    self.spares.append(&mut handoff.free);
                    drop(handoff);
                    shared.1.notify_all();
                    match self.next_segment() {
                        Some(buf) => self.buf = buf,
                        None => self.lent = true,
                    }
                    return Poll::Ready(());
                }
            }
            ready!(self.poll_job(cx));
        }
    }

    /// After `poll_send` queued the last free segment: waits for the job
    /// to hand one back, or to end.
    fn poll_reclaim(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Busy(_, shared) = &self.state {
            let mut handoff = lock(shared);
            if !handoff.free.is_empty() {
                self.spares.append(&mut handoff.free);
                drop(handoff);
                self.buf = self.next_segment().unwrap_or_default();
                self.lent = false;
                return Poll::Ready(());
            }
            // The job wakes this on the next segment it hands back.
            handoff.waker = Some(cx.waker().clone());
        }
        // Ending, the job hands everything back (see `poll_job`).
        self.poll_job(cx)
    }

    /// Writes out every full segment and waits for the job in flight,
    /// reporting the first error. A partial segment stays for the next
    /// write or for the commit, which writes it in the hop it needs anyway:
    /// flushing an atomic file publishes nothing, so it should not cost a
    /// hop of its own (`tokio::io::copy` flushes once at the end).
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_settle(cx));
        if self.error.is_none() && self.buf.len() >= self.capacity {
            self.submit();
            ready!(self.poll_idle(cx));
        }
        Poll::Ready(match self.sticky() {
            Some(e) => Err(e),
            None => Ok(()),
        })
    }

    /// Waits for the job in flight, then sends the segment being filled
    /// and the pending seek to the pool as one job, with nothing to be
    /// queued behind it.
    fn poll_send_seek(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.poll_idle(cx));
        let Some((to, seek)) = self.seek_to.take() else {
            return Poll::Ready(());
        };
        if self.error.is_some() {
            return Poll::Ready(());
        }
        let State::Idle(sink) = &mut self.state else {
            unreachable!("idle after poll_idle")
        };
        let Some(mut sink) = sink.take() else {
            return Poll::Ready(());
        };
        let next = self.next_segment().unwrap_or_default();
        let mut buf = std::mem::replace(&mut self.buf, next);
        // Closed from the start: a segment filled meanwhile waits for this
        // job to end and goes in a job of its own, after the seek.
        let shared = Arc::new((Mutex::new(Handoff::default()), Condvar::new()));
        let job = move || {
            let result = sink.write_all(&buf).and_then(|()| seek(&mut sink, to));
            buf.clear();
            (sink, buf, result)
        };
        self.state = State::Busy(P::spawn(job), shared);
        self.seeking = true;
        Poll::Ready(())
    }

    /// Sends a pending seek to the pool, then waits until no job is in
    /// flight: before a flush or a commit, which must not lose the seek.
    pub(crate) fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.seek_to.is_some() {
            ready!(self.poll_send_seek(cx));
        }
        self.poll_idle(cx)
    }

    /// Waits until no job is in flight, telling a running one that nothing
    /// more will come. The job still writes every segment queued before it
    /// ends (closing ends only its wait for more), so once idle the file
    /// holds every byte accepted but those of the segment being filled.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Busy(_, shared) = &self.state {
            close(shared);
        }
        self.poll_job(cx)
    }

    /// Waits for the running job to end, recording its outcome and taking
    /// back every segment.
    fn poll_job(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let State::Busy(handle, shared) = &mut self.state else {
            return Poll::Ready(());
        };
        let outcome = ready!(Pin::new(handle).poll(cx));
        {
            let mut handoff = lock(shared);
            self.spares.append(&mut handoff.free);
            // An error left these unwritten: the error is sticky and their
            // bytes are lost either way.
            for mut buf in handoff.queued.drain(..) {
                buf.clear();
                self.spares.push(buf);
            }
        }
        self.seeking = false;
        match outcome {
            Ok((sink, buf, result)) => {
                self.spares.push(buf);
                self.state = State::Idle(Some(sink));
                if let Err(e) = result {
                    self.fail(e);
                }
            }
            Err(e) => {
                self.state = State::Idle(None);
                self.fail(e);
            }
        }
        if self.lent {
            self.buf = self.next_segment().unwrap_or_default();
            self.lent = false;
        }
        // Every segment is back: filling, spare or not allocated yet. Only
        // a job that panicked (and took the sink) loses one.
        debug_assert!(
            matches!(self.state, State::Idle(None))
                || 1 + self.spares.len() + self.unallocated == self.segments,
            "a segment went missing"
        );
        Poll::Ready(())
    }

    /// Sends the filled segment to the pool. Only when idle and without
    /// error.
    fn submit(&mut self) {
        let State::Idle(sink) = &mut self.state else {
            unreachable!("submit while busy")
        };
        let Some(sink) = sink.take() else {
            // The sink was lost with a failed job, which set the error.
            return;
        };
        let next = self.next_segment().unwrap_or_default();
        let buf = std::mem::replace(&mut self.buf, next);
        let handoff = Handoff {
            accepting: true,
            ..Handoff::default()
        };
        let shared = Arc::new((Mutex::new(handoff), Condvar::new()));
        let job_shared = Arc::clone(&shared);
        let job = move || write_job(sink, buf, &job_shared, P::LINGER);
        self.state = State::Busy(P::spawn(job), shared);
    }

    /// Bytes accepted in all, seeks or not: what the file received.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Once idle: the sink and the bytes still buffered, or the first error
    /// (the sink then stays, for [`take_sink`](Self::take_sink) to clean up).
    pub(crate) fn take_parts(&mut self) -> io::Result<(W, Vec<u8>)> {
        if let Some(e) = self.error.take() {
            // Later calls still fail, with the same kind.
            self.error = Some(crate::error::copy_io_error(&e));
            return Err(e);
        }
        match &mut self.state {
            State::Idle(sink) => match sink.take() {
                Some(sink) => Ok((sink, std::mem::take(&mut self.buf))),
                None => Err(io::Error::other(
                    "the file was already committed or rolled back",
                )),
            },
            State::Busy(..) => unreachable!("take_parts while busy"),
        }
    }

    /// The sink if no job holds it. A job in flight keeps it, and drops it
    /// when done if nobody waits for the result.
    pub(crate) fn take_sink(&mut self) -> Option<W> {
        match &mut self.state {
            State::Idle(sink) => sink.take(),
            State::Busy(..) => None,
        }
    }

    /// `"idle"`, `"busy"` or `"failed"`, for `Debug`.
    pub(crate) fn describe(&self) -> &'static str {
        match (&self.state, &self.error) {
            (_, Some(_)) => "failed",
            (State::Busy(..), None) => "busy",
            (State::Idle(Some(_)), None) => "idle",
            (State::Idle(None), None) => "done",
        }
    }

    /// Bytes accepted but not yet handed to the pool.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl<W, P> Pipeline<W, P>
where
    W: Write + Seek + Send + 'static,
    P: Pool,
{
    /// Accepts a seek: works out where it lands, from the position and
    /// length kept here, and leaves it for [`poll_complete`] (or the next
    /// write, flush or commit) to carry out. A seek to where the next byte
    /// would go anyway (`SeekFrom::Current(0)`, a stream position query)
    /// costs nothing. Errors here (a position before 0 or past `i64::MAX`)
    /// change nothing and are not sticky.
    ///
    /// [`poll_complete`]: Self::poll_complete
    pub(crate) fn start_seek(&mut self, to: SeekFrom) -> io::Result<()> {
        if let Some(e) = self.sticky() {
            return Err(e);
        }
        if self.seek_to.is_some() {
            return Err(io::Error::other(
                "a seek is already pending: call poll_complete first",
            ));
        }
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let target = target
            .filter(|t| i64::try_from(*t).is_ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "invalid seek to a negative or overflowing position",
                )
            })?;
        if target != self.position {
            let seek: SeekFn<W> = |sink, to| sink.seek(SeekFrom::Start(to)).map(drop);
            self.seek_to = Some((target, seek));
            self.position = target;
        }
        Ok(())
    }

    /// Carries out the seek accepted by `start_seek`, if any, and reports
    /// the position: the buffered bytes are written where they belong and
    /// the file is repositioned, in one job. Without a seek pending,
    /// answers at once.
    pub(crate) fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if self.seek_to.is_some() {
            ready!(self.poll_send_seek(cx));
        }
        if self.seeking {
            ready!(self.poll_job(cx));
        }
        Poll::Ready(match self.sticky() {
            Some(e) => Err(e),
            None => Ok(self.position),
        })
    }
}

impl<W: Send + 'static, P: Pool> Drop for Pipeline<W, P> {
    /// A job still running stops after its current segment: what is
    /// queued would be thrown away with the file anyway.
    fn drop(&mut self) {
        if let State::Busy(_, shared) = &self.state {
            lock(shared).queued.clear();
            close(shared);
        }
    }
}

/// The job: writes `buf`, then each segment queued meanwhile (or, once
/// the caller keeps up, within [`LINGER`]), in order, handing every
/// written one back; ends when nothing comes, at the first error, or when
/// the caller closes the queue and everything queued is written.
///
/// The caller is woken on the first segment handed back after it began to
/// wait (it waits only when every segment is out, and registers its waker
/// only then), not once several are back: at that point the job still has
/// every other segment queued, the most it can have, to write while the
/// wake-up takes its time, and a caller that wakes fills the segments
/// handed back meanwhile without waiting again. Waking later (at half the
/// segments, say) would save wake-ups only for a caller that is ahead of
/// the disk anyway, and would leave the job less to write meanwhile.
fn write_job<W: Write>(mut sink: W, mut buf: Vec<u8>, shared: &Shared, linger: Duration) -> Job<W> {
    let mut keeping_up = false;
    loop {
        let result = sink.write_all(&buf);
        buf.clear();
        let mut handoff = lock(shared);
        if keeping_up && result.is_ok() {
            handoff = wait_for_next(shared, handoff, linger);
        }
        // A closed queue still has what it holds written: closing only
        // ends the wait. (A dropped pipeline empties the queue first.)
        let next = match result {
            Ok(()) => handoff.queued.pop_front(),
            Err(_) => None,
        };
        let Some(next) = next else {
            handoff.accepting = false;
            return (sink, buf, result);
        };
        keeping_up = true;
        handoff.free.push(std::mem::replace(&mut buf, next));
        let waker = handoff.waker.take();
        drop(handoff);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Waits, for `linger` at most, while the queue is open and empty: what
/// `Condvar::wait_timeout_while` does, written out because loom's
/// `Condvar` has only `wait_timeout`. A spurious wake-up waits again for
/// the time left; only the deadline, a queued segment or a closed queue
/// ends the wait. A `linger` too long to add to the clock has no
/// deadline.
fn wait_for_next<'a>(
    shared: &'a Shared,
    mut handoff: MutexGuard<'a, Handoff>,
    linger: Duration,
) -> MutexGuard<'a, Handoff> {
    let deadline = Instant::now().checked_add(linger);
    while handoff.accepting && handoff.queued.is_empty() {
        let left = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => linger,
        };
        if left.is_zero() {
            break;
        }
        handoff = shared
            .1
            .wait_timeout(handoff, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    handoff
}

#[cfg(all(test, loom))]
mod loom_tests;

// The fake pool runs jobs on the test's thread, and the thread pool on std
// threads: neither works inside a loom model, so the loom build leaves
// them out.
#[cfg(all(test, not(loom)))]
mod tests {
    //! The pipeline against a fake pool whose jobs run when the test says.
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    type Slot<T> = Arc<Mutex<Option<T>>>;

    thread_local! {
        /// Jobs spawned and not yet run, and how many Pending each handle
        /// answers before it looks at its slot.
        static QUEUE: RefCell<VecDeque<Box<dyn FnOnce()>>> = RefCell::new(VecDeque::new());
        static PENDING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        static SPAWNED: RefCell<usize> = const { RefCell::new(0) };
    }

    struct FakePool;

    struct FakeHandle<T> {
        slot: Slot<T>,
        pending: u8,
    }

    impl<T> Future for FakeHandle<T> {
        type Output = io::Result<T>;
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<T>> {
            if self.pending > 0 {
                self.pending -= 1;
                return Poll::Pending;
            }
            match self.slot.lock().unwrap().take() {
                Some(v) => Poll::Ready(Ok(v)),
                None => Poll::Pending,
            }
        }
    }

    impl Pool for FakePool {
        // Jobs run on the test's own thread: nobody can queue while one
        // waits.
        const LINGER: Duration = Duration::ZERO;
        type Handle<T: Send + 'static> = FakeHandle<T>;
        fn spawn<T, F>(job: F) -> FakeHandle<T>
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            let slot: Slot<T> = Arc::new(Mutex::new(None));
            let out = slot.clone();
            QUEUE.with(|q| {
                q.borrow_mut()
                    .push_back(Box::new(move || *out.lock().unwrap() = Some(job())))
            });
            SPAWNED.with(|s| *s.borrow_mut() += 1);
            let pending = PENDING.with(|p| p.borrow_mut().pop().unwrap_or(0));
            FakeHandle { slot, pending }
        }
    }

    fn run_jobs() -> usize {
        let mut n = 0;
        while let Some(job) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
            job();
            n += 1;
        }
        n
    }

    fn spawned() -> usize {
        SPAWNED.with(|s| *s.borrow())
    }

    /// A sink that writes at most `max` bytes per call and fails once it
    /// holds `fail_after` bytes.
    #[derive(Clone)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        max: usize,
        fail_after: Option<usize>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut data = self.data.lock().unwrap();
            if self.fail_after.is_some_and(|limit| data.len() >= limit) {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.max);
            data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sink(max: usize, fail_after: Option<usize>) -> Sink {
        Sink {
            data: Arc::default(),
            max,
            fail_after,
        }
    }

    /// Polls `f` to completion, running queued jobs whenever it is pending.
    fn drive<T>(mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..10_000 {
            if let Poll::Ready(v) = f(&mut cx) {
                return v;
            }
            run_jobs();
        }
        panic!("never ready");
    }

    #[test]
    fn small_writes_cost_no_hop_until_the_buffer_fills() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 16, 2);
        let before = spawned();
        for _ in 0..3 {
            assert_eq!(drive(|cx| p.poll_write(cx, b"abcde")).unwrap(), 5);
        }
        assert_eq!(spawned() - before, 0, "15 bytes fit in a 16-byte buffer");
        assert_eq!(p.buffered(), 15);
        assert_eq!(
            drive(|cx| p.poll_write(cx, b"xy")).unwrap(),
            1,
            "fills the buffer"
        );
        assert_eq!(spawned() - before, 1, "a full buffer goes out at once");
        assert_eq!(p.describe(), "busy");
        // The next buffer fills while the first job has not run yet.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(p.poll_write(&mut cx, b"y"), Poll::Ready(Ok(1))));
        assert_eq!(run_jobs(), 1);
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdeabcdeabcdex");
        assert_eq!(spawned() - before, 1, "flushing a partial buffer is no hop");
        let (_, rest) = p.take_parts().unwrap();
        assert_eq!(rest, b"y", "left for the commit");
    }

    #[test]
    fn a_huge_capacity_allocates_only_what_is_written() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), usize::MAX, 2);
        assert_eq!(drive(|cx| p.poll_write(cx, b"abc")).unwrap(), 3);
        assert!(p.buf.capacity() < 1024, "{}", p.buf.capacity());
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(p.take_parts().unwrap().1, b"abc");
    }

    #[test]
    fn a_full_buffer_waits_for_the_job_in_flight() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(p.poll_write(&mut cx, b"abcd"), Poll::Ready(Ok(4))));
        assert!(matches!(p.poll_write(&mut cx, b"efgh"), Poll::Ready(Ok(4))));
        // Two buffers are taken: the third write must wait.
        assert!(p.poll_write(&mut cx, b"ijkl").is_pending());
        assert!(p.poll_write(&mut cx, b"ijkl").is_pending());
        run_jobs();
        assert!(matches!(p.poll_write(&mut cx, b"ijkl"), Poll::Ready(Ok(4))));
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefghijkl");
    }

    /// Segments allocated and alive: the one filling, the spares, the one
    /// the job holds, those queued or handed back.
    fn buffers_held(p: &Pipeline<Sink, FakePool>) -> usize {
        buffers_held_by(p)
    }

    fn buffers_held_by<W: Write + Send + 'static>(p: &Pipeline<W, FakePool>) -> usize {
        let alloc = |b: &Vec<u8>| usize::from(b.capacity() > 0);
        let mut n = alloc(&p.buf) + p.spares.iter().map(alloc).sum::<usize>();
        if let State::Busy(_, shared) = &p.state {
            let handoff = lock(shared);
            n += 1
                + handoff.queued.iter().map(alloc).sum::<usize>()
                + handoff.free.iter().map(alloc).sum::<usize>();
        }
        n
    }

    /// The largest allocation among the segments the pipeline holds or
    /// has queued or handed back (the job's own is one of these before and
    /// after it is written).
    fn largest_segment<W: Write + Send + 'static>(p: &Pipeline<W, FakePool>) -> usize {
        let mut largest = p.spares.iter().map(Vec::capacity).max().unwrap_or(0);
        largest = largest.max(p.buf.capacity());
        if let State::Busy(_, shared) = &p.state {
            let handoff = lock(shared);
            let out = handoff.queued.iter().chain(&handoff.free);
            largest = largest.max(out.map(Vec::capacity).max().unwrap_or(0));
        }
        largest
    }

    /// Every segment is back in the pipeline, none lost with a job.
    fn assert_segments_back<W: Write + Send + 'static>(p: &Pipeline<W, FakePool>) {
        assert!(matches!(p.state, State::Idle(_)), "a job is in flight");
        assert!(!p.lent, "a segment is still out");
        assert_eq!(1 + p.spares.len() + p.unallocated, p.segments);
    }

    #[test]
    fn a_buffer_filled_during_a_job_queues_behind_it_without_a_hop() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 2);
        let mut cx = Context::from_waker(Waker::noop());
        let before = spawned();
        assert!(matches!(p.poll_write(&mut cx, b"abcd"), Poll::Ready(Ok(4))));
        assert_eq!(spawned() - before, 1, "the first buffer starts a job");
        assert!(matches!(p.poll_write(&mut cx, b"efgh"), Poll::Ready(Ok(4))));
        assert_eq!(spawned() - before, 1, "the second is queued behind it");
        assert!(p.lent, "both buffers are out");
        assert!(p.poll_write(&mut cx, b"ijkl").is_pending(), "a third waits");
        assert_eq!(buffers_held(&p), 2);
        // The one job writes both buffers and hands the first back.
        assert_eq!(run_jobs(), 1);
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefgh");
        assert!(matches!(p.poll_write(&mut cx, b"ijkl"), Poll::Ready(Ok(4))));
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefghijkl");
        assert_eq!(spawned() - before, 2, "three buffers, two hops");
        assert!(buffers_held(&p) <= 2);
    }

    /// Where the bytes of each write to the sink live.
    #[derive(Clone, Default)]
    struct Addresses(Arc<Mutex<Vec<usize>>>);

    impl Write for Addresses {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.as_ptr() as usize);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Streams 40 segments' worth through a pipeline of two 64-byte
    /// buffers' memory cut into `segments`, in writes larger than a segment
    /// and in small ones, running the jobs when the caller waits (or, with
    /// `RunJobs::AfterEveryWrite`, as soon as they start: a disk that keeps
    /// up). Checks at every step that no more than `segments` segments are
    /// allocated, none larger than a segment, and returns the distinct
    /// addresses the sink saw.
    fn stream_addresses(segments: usize, run: RunJobs) -> Vec<usize> {
        let s = Addresses::default();
        let mut p: Pipeline<Addresses, FakePool> = Pipeline::new(s.clone(), 64, segments);
        let size = 2 * 64 / segments;
        assert_eq!(p.capacity, size);
        let big = [7u8; 1000];
        let mut cx = Context::from_waker(Waker::noop());
        let mut written = 0;
        while written < 40 * size {
            let chunk = if written % 3 == 0 {
                &big[..]
            } else {
                &big[..10]
            };
            match p.poll_write(&mut cx, chunk) {
                Poll::Ready(n) => written += n.unwrap(),
                Poll::Pending => {
                    run_jobs();
                }
            }
            if run == RunJobs::AfterEveryWrite {
                run_jobs();
            }
            assert!(buffers_held_by(&p) <= segments, "{}", buffers_held_by(&p));
            assert!(largest_segment(&p) <= size, "{}", largest_segment(&p));
        }
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_segments_back(&p);
        let seen = s.0.lock().unwrap().clone();
        assert!(seen.len() >= 39, "{} writes", seen.len());
        let mut distinct = seen;
        distinct.sort_unstable();
        distinct.dedup();
        distinct
    }

    #[derive(PartialEq)]
    enum RunJobs {
        WhenTheCallerWaits,
        AfterEveryWrite,
    }

    #[test]
    fn a_stream_is_copied_once_into_two_buffers_used_over_and_over() {
        // Every buffer the sink sees is one of the same two allocations,
        // so no byte is copied into a fresh buffer or moved between
        // buffers on its way to the file.
        let seen = stream_addresses(2, RunJobs::WhenTheCallerWaits);
        assert_eq!(seen.len(), 2, "two buffers, reused: {seen:x?}");
    }

    #[test]
    fn a_stream_uses_every_segment_over_and_over_and_never_more() {
        // A job that runs only once the caller waits has every segment
        // queued: all four are allocated, reused, and no fifth.
        let seen = stream_addresses(4, RunJobs::WhenTheCallerWaits);
        assert_eq!(seen.len(), 4, "four segments, reused: {seen:x?}");
    }

    #[test]
    fn a_job_that_keeps_up_costs_two_segments_of_memory_not_all() {
        // A segment handed back is filled again before a fresh one is
        // allocated.
        let seen = stream_addresses(6, RunJobs::AfterEveryWrite);
        assert_eq!(seen.len(), 2, "two segments, reused: {seen:x?}");
    }

    #[test]
    fn the_segments_share_the_memory_of_two_buffers() {
        let p: Pipeline<Sink, FakePool> = Pipeline::new(sink(usize::MAX, None), 1 << 20, 2);
        assert_eq!((p.segments, p.capacity), (2, 1 << 20), "double buffering");
        let p: Pipeline<Sink, FakePool> = Pipeline::new(sink(usize::MAX, None), 1 << 20, 16);
        assert_eq!((p.segments, p.capacity), (16, 128 << 10));
        let p: Pipeline<Sink, FakePool> = Pipeline::new(sink(usize::MAX, None), 100, 3);
        assert_eq!((p.segments, p.capacity), (3, 66), "rounded down");
        let p: Pipeline<Sink, FakePool> = Pipeline::new(sink(usize::MAX, None), 100, 0);
        assert_eq!((p.segments, p.capacity), (2, 100), "at least two");
        let p: Pipeline<Sink, FakePool> = Pipeline::new(sink(usize::MAX, None), 3, 100);
        assert_eq!((p.segments, p.capacity), (6, 1), "at least a byte each");
        let p: Pipeline<Sink, FakePool> = Pipeline::new(sink(usize::MAX, None), usize::MAX, 7);
        assert_eq!(
            p.capacity,
            (2 * (usize::MAX as u128) / 7) as usize,
            "no overflow"
        );
    }

    #[test]
    fn with_four_segments_a_third_fills_while_two_are_out() {
        let s = sink(usize::MAX, None);
        // Two buffers of 4 bytes, cut into four segments of 2.
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 4);
        let mut cx = Context::from_waker(Waker::noop());
        let before = spawned();
        assert!(matches!(p.poll_write(&mut cx, b"ab"), Poll::Ready(Ok(2))));
        assert_eq!(spawned() - before, 1, "the first segment starts a job");
        assert!(matches!(p.poll_write(&mut cx, b"cd"), Poll::Ready(Ok(2))));
        assert!(!p.lent, "two out (one in the job, one queued), two free");
        // The job has not run: nothing came back, and none is needed.
        assert!(matches!(p.poll_write(&mut cx, b"e"), Poll::Ready(Ok(1))));
        assert_eq!(p.buffered(), 1, "a third segment is filling");
        assert!(matches!(p.poll_write(&mut cx, b"fgh"), Poll::Ready(Ok(1))));
        assert!(matches!(p.poll_write(&mut cx, b"gh"), Poll::Ready(Ok(2))));
        assert!(p.lent, "all four out: one in the job, three queued");
        assert!(p.poll_write(&mut cx, b"ij").is_pending(), "a fifth waits");
        assert_eq!(buffers_held(&p), 4);
        assert!(s.data.lock().unwrap().is_empty(), "no job has run");
        assert_eq!(spawned() - before, 1, "four segments, one job");
        // The one job writes all four in order and hands three back.
        assert_eq!(run_jobs(), 1);
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefgh");
        assert!(matches!(p.poll_write(&mut cx, b"ij"), Poll::Ready(Ok(2))));
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefghij");
        assert_eq!(spawned() - before, 2, "five segments, two hops");
        assert_segments_back(&p);
    }

    #[test]
    fn the_caller_waits_only_when_every_segment_is_out() {
        for segments in 2..=6 {
            let s = sink(usize::MAX, None);
            // Segments of 2 bytes.
            let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), segments, segments);
            let mut cx = Context::from_waker(Waker::noop());
            let mut filled = 0;
            while p.poll_write(&mut cx, b"xy").is_ready() {
                filled += 1;
                assert!(filled <= segments, "{segments} segments: never waited");
            }
            assert_eq!(filled, segments, "{segments} segments: waited early");
            assert!(p.lent);
            assert_eq!(buffers_held(&p), segments);
            run_jobs();
            assert!(p.poll_write(&mut cx, b"xy").is_ready(), "one came back");
            drive(|cx| p.poll_flush(cx)).unwrap();
            assert_eq!(s.data.lock().unwrap().len(), 2 * (segments + 1));
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_caller_is_woken_once_by_the_first_segment_handed_back() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 4);
        let wakes = Arc::new(CountWakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        for chunk in [b"ab", b"cd", b"ef", b"gh"] {
            assert!(matches!(p.poll_write(&mut cx, chunk), Poll::Ready(Ok(2))));
        }
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(p.poll_write(&mut cx, b"ij").is_pending());
        // The job hands three back; the fake pool's handle wakes nobody.
        run_jobs();
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(p.poll_write(&mut cx, b"ij"), Poll::Ready(Ok(2))));
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefgh");
    }

    /// A pool of real threads with a long linger, to see the wait itself.
    struct ThreadPool;

    type ThreadSlot<T> = Arc<Mutex<(Option<T>, Option<Waker>)>>;

    struct ThreadHandle<T>(ThreadSlot<T>);

    impl<T> Future for ThreadHandle<T> {
        type Output = io::Result<T>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
            let mut slot = self.0.lock().unwrap();
            match slot.0.take() {
                Some(v) => Poll::Ready(Ok(v)),
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    static THREAD_JOBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl Pool for ThreadPool {
        const LINGER: Duration = Duration::from_secs(30);
        type Handle<T: Send + 'static> = ThreadHandle<T>;
        fn spawn<T, F>(job: F) -> ThreadHandle<T>
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            THREAD_JOBS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let slot: ThreadSlot<T> = Arc::default();
            let out = slot.clone();
            std::thread::spawn(move || {
                let v = job();
                let mut slot = out.lock().unwrap();
                slot.0 = Some(v);
                if let Some(w) = slot.1.take() {
                    w.wake();
                }
            });
            ThreadHandle(slot)
        }
    }

    /// Polls `f` to completion on this thread, parking while it is pending.
    fn block_on<T>(mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    /// The two linger tests share THREAD_JOBS: one at a time.
    static THREADED: Mutex<()> = Mutex::new(());

    /// A sink that takes its time over every write.
    struct Slow(Sink);

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(50));
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_job_that_kept_up_waits_for_the_next_buffer_and_a_flush_ends_the_wait() {
        let _one = THREADED.lock().unwrap();
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Slow, ThreadPool> = Pipeline::new(Slow(s.clone()), 4, 2);
        let jobs = THREAD_JOBS.load(std::sync::atomic::Ordering::SeqCst);
        let start = std::time::Instant::now();
        // The second buffer is queued while the job writes the first: the
        // caller keeps up.
        for chunk in [b"abcd", b"efgh"] {
            assert_eq!(block_on(|cx| p.poll_write(cx, chunk)).unwrap(), 4);
        }
        // The job writes both (100 ms), then waits; a buffer that comes
        // 300 ms later still finds it.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefgh");
        assert_eq!(block_on(|cx| p.poll_write(cx, b"ijkl")).unwrap(), 4);
        block_on(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefghijkl");
        let spawned = THREAD_JOBS.load(std::sync::atomic::Ordering::SeqCst) - jobs;
        assert_eq!(spawned, 1, "one job for three buffers");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the flush ended the 30 s wait"
        );
    }

    #[test]
    fn a_job_for_a_caller_that_has_not_kept_up_does_not_wait() {
        let _one = THREADED.lock().unwrap();
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, ThreadPool> = Pipeline::new(s.clone(), 4, 2);
        let start = std::time::Instant::now();
        assert_eq!(block_on(|cx| p.poll_write(cx, b"abcd")).unwrap(), 4);
        // Nothing queued while it wrote: the job ends at once, queue open.
        block_on(|cx| p.poll_job(cx));
        assert!(start.elapsed() < Duration::from_secs(10), "no 30 s wait");
        assert_eq!(&*s.data.lock().unwrap(), b"abcd");
    }

    #[test]
    fn a_flush_writes_the_buffer_queued_behind_the_job() {
        // Closing the queue (flush, commit) ends the job's wait for more,
        // not the writing of what is already queued.
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(p.poll_write(&mut cx, b"abcd"), Poll::Ready(Ok(4))));
        assert!(matches!(p.poll_write(&mut cx, b"efgh"), Poll::Ready(Ok(4))));
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefgh");
        assert!(p.take_parts().unwrap().1.is_empty());
    }

    #[test]
    fn a_commit_finds_every_queued_segment_written_and_the_partial_one_left() {
        // What a commit does first (`poll_settle`), then `take_parts`: the
        // sink it takes holds every queued segment, in order, and the rest
        // comes with it.
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 4);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            p.poll_write(&mut cx, b"abcdefg"),
            Poll::Ready(Ok(2))
        ));
        for chunk in [&b"cdefg"[..], b"efg", b"g"] {
            assert!(p.poll_write(&mut cx, chunk).is_ready());
        }
        assert_eq!(p.buffered(), 1);
        assert!(s.data.lock().unwrap().is_empty(), "three segments queued");
        drive(|cx| p.poll_settle(cx));
        let (_, rest) = p.take_parts().unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdef");
        assert_eq!(rest, b"g");
    }

    #[test]
    fn a_dropped_pipeline_stops_its_job_after_the_current_buffer() {
        for segments in [2, 4] {
            let s = sink(usize::MAX, None);
            // Segments of 2 bytes.
            let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), segments, segments);
            let mut cx = Context::from_waker(Waker::noop());
            for chunk in [b"ab", b"cd", b"ef", b"gh"].iter().take(segments) {
                assert!(matches!(p.poll_write(&mut cx, *chunk), Poll::Ready(Ok(2))));
            }
            assert!(p.lent, "every segment is out");
            drop(p);
            run_jobs();
            assert_eq!(
                &*s.data.lock().unwrap(),
                b"ab",
                "{segments} segments: the queued ones are dropped"
            );
        }
    }

    #[test]
    fn an_error_with_a_buffer_queued_is_sticky_and_gives_the_buffer_back() {
        let s = sink(usize::MAX, Some(0));
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s, 4, 2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(p.poll_write(&mut cx, b"abcd"), Poll::Ready(Ok(4))));
        assert!(matches!(p.poll_write(&mut cx, b"efgh"), Poll::Ready(Ok(4))));
        run_jobs();
        let err = drive(|cx| p.poll_write(cx, b"ijkl")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(!p.lent);
        assert!(buffers_held(&p) <= 2);
        assert_eq!(p.take_parts().err().unwrap().to_string(), "disk full");
    }

    #[test]
    fn an_error_with_segments_queued_gives_every_one_back() {
        // The second segment fails, with two more queued behind it.
        let s = sink(usize::MAX, Some(2));
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4, 4);
        let mut cx = Context::from_waker(Waker::noop());
        for chunk in [b"ab", b"cd", b"ef", b"gh"] {
            assert!(matches!(p.poll_write(&mut cx, chunk), Poll::Ready(Ok(2))));
        }
        assert!(p.lent);
        run_jobs();
        // (A write now might take the first segment, handed back before
        // the error, and see the error only at its next call.)
        let err = drive(|cx| p.poll_flush(cx)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_segments_back(&p);
        assert_eq!(buffers_held(&p), 4, "all four came back");
        assert_eq!(&*s.data.lock().unwrap(), b"ab");
        let again = drive(|cx| p.poll_write(cx, b"ij")).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::StorageFull, "sticky");
        assert_eq!(p.take_parts().err().unwrap().to_string(), "disk full");
    }

    #[test]
    fn errors_are_sticky_and_kept_whole() {
        let s = sink(usize::MAX, Some(0));
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s, 4, 2);
        assert_eq!(drive(|cx| p.poll_write(cx, b"abcd")).unwrap(), 4);
        let err = drive(|cx| p.poll_flush(cx)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        let err = drive(|cx| p.poll_write(cx, b"more")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        let whole = p.take_parts().err().expect("the first error");
        assert_eq!(whole.kind(), io::ErrorKind::StorageFull);
        assert_eq!(whole.to_string(), "disk full");
        assert!(
            whole.get_ref().is_some(),
            "the original error, not a copy of its kind"
        );
        assert!(p.take_parts().is_err(), "still failed");
        assert!(p.take_sink().is_some(), "the sink stays for cleanup");
    }

    /// Every write fails with an OS error: `ENOSPC`.
    struct NoSpace;

    impl Write for NoSpace {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A later call's copy of a sticky error keeps the OS error code, not
    /// just its kind and message.
    #[test]
    fn a_sticky_os_error_keeps_its_code_in_every_copy() {
        let mut p: Pipeline<NoSpace, FakePool> = Pipeline::new(NoSpace, 4, 2);
        assert_eq!(drive(|cx| p.poll_write(cx, b"abcd")).unwrap(), 4);
        let flushed = drive(|cx| p.poll_flush(cx)).unwrap_err();
        let written = drive(|cx| p.poll_write(cx, b"more")).unwrap_err();
        let first = p.take_parts().err().expect("the first error");
        let again = p.take_parts().err().expect("still failed");
        for e in [flushed, written, first, again] {
            assert_eq!(e.raw_os_error(), Some(28), "{e:?}");
        }
    }

    #[test]
    fn a_lost_job_fails_the_pipeline() {
        struct LostPool;
        struct Lost<T>(std::marker::PhantomData<fn() -> T>);
        impl<T> Future for Lost<T> {
            type Output = io::Result<T>;
            fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<T>> {
                Poll::Ready(Err(io::Error::other("job panicked")))
            }
        }
        impl Pool for LostPool {
            type Handle<T: Send + 'static> = Lost<T>;
            fn spawn<T, F>(job: F) -> Lost<T>
            where
                F: FnOnce() -> T + Send + 'static,
                T: Send + 'static,
            {
                drop(job);
                Lost(std::marker::PhantomData)
            }
        }
        let mut p: Pipeline<Sink, LostPool> = Pipeline::new(sink(usize::MAX, None), 2, 2);
        assert_eq!(drive(|cx| p.poll_write(cx, b"ab")).unwrap(), 2);
        let err = drive(|cx| p.poll_flush(cx)).unwrap_err();
        assert_eq!(err.to_string(), "job panicked");
        assert!(p.take_sink().is_none(), "the sink went with the job");
        assert_eq!(p.describe(), "failed");
    }

    proptest! {
        /// Random chunk and buffer sizes, segment counts, short writes,
        /// Pending from the pool: the sink and the rest left for the commit
        /// hold exactly the input, in at most `segments` segments that
        /// together take no more than two buffers.
        #[test]
        fn content_equals_input(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            chunks in proptest::collection::vec(1usize..700, 1..40),
            capacity in 1usize..600,
            segments in 2usize..=6,
            max_write in 1usize..300,
            pendings in proptest::collection::vec(0u8..4, 0..64),
        ) {
            PENDING.with(|p| *p.borrow_mut() = pendings);
            let s = sink(max_write, None);
            let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), capacity, segments);
            let size = p.capacity;
            prop_assert!(p.segments <= segments && p.segments * size <= 2 * capacity);
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let len = chunks[i % chunks.len()].min(rest.len());
                i += 1;
                let mut chunk = &rest[..len];
                while !chunk.is_empty() {
                    let n = drive(|cx| p.poll_write(cx, chunk)).unwrap();
                    prop_assert!(n > 0 && n <= chunk.len());
                    chunk = &chunk[n..];
                    prop_assert!(largest_segment(&p) <= size, "{}", largest_segment(&p));
                    prop_assert!(buffers_held(&p) <= p.segments, "{} segments", buffers_held(&p));
                }
                rest = &rest[len..];
            }
            drive(|cx| p.poll_flush(cx)).unwrap();
            let (_, left) = p.take_parts().unwrap();
            prop_assert!(left.len() < size, "a full segment went out");
            assert_segments_back(&p);
            let mut got = s.data.lock().unwrap().clone();
            got.extend_from_slice(&left);
            prop_assert_eq!(got, data);
            run_jobs();
        }
    }
}
