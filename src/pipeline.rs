//! The double-buffered write pipeline behind [`AsyncAtomicFile`]: small
//! writes gather in memory; a full buffer goes to the pool while the next
//! one fills. Pure state machine: generic over the sink (any `io::Write`)
//! and the pool, so the tests drive it with a fake pool that they step by
//! hand, and a loom model (`loom_tests`) runs the job on a thread of its
//! own, under every interleaving with the caller.
//!
//! A job on the pool writes one buffer, then any buffer queued behind it
//! meanwhile, handing each written buffer back for the next fill: while
//! the caller keeps up, one hop carries many buffers and the writing
//! thread never waits for a wake-up between them. There are never more
//! than two buffers: when both are out (one being written, one queued) the
//! caller waits for the first to come back.
//!
//! [`AsyncAtomicFile`]: crate::AsyncAtomicFile

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

/// How long a job that has written its buffer waits for the next one
/// before it ends, once the caller has shown it keeps up (a buffer was
/// queued while the job wrote). Such a caller refills a buffer far faster
/// than the disk or the page cache takes one, but only after a wake-up,
/// which on a busy or virtual machine can take hundreds of microseconds:
/// without the wait the chain of buffers breaks and each costs a hop
/// again. A slower caller (fed by the network, say) gets no wait, so its
/// jobs hold no pool thread idle. A caller that is done (flush, commit,
/// drop) ends the wait at once.
const LINGER: Duration = Duration::from_millis(1);

/// Somewhere to run blocking jobs: the Tokio blocking pool, or a test fake.
pub(crate) trait Pool {
    /// How long a write job waits for the next buffer; see [`LINGER`].
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

/// What a write job hands back: the sink, its last buffer emptied, the
/// outcome.
type Job<W> = (W, Vec<u8>, io::Result<()>);

/// Between the caller and a running job: one buffer queued for the job,
/// one written buffer handed back.
#[derive(Default)]
struct Handoff {
    /// A full buffer for the job to write after its current one.
    queued: Option<Vec<u8>>,
    /// A buffer the job has written, emptied, for the caller to fill.
    free: Option<Vec<u8>>,
    /// False once the job is ending (nothing more to write, an error) or
    /// the caller has closed the queue: nothing may be queued any more, and
    /// the job does not wait for more.
    accepting: bool,
    /// The caller, waiting for `free`.
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
/// as its current buffer is written.
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
    /// A job owns the sink and a buffer.
    Busy(P::Handle<Job<W>>, Shared),
}

/// The pipeline. Two buffers at most, each in one of these places at a
/// time: filling (unless `lent`), in the job, queued or handed back, or the
/// spare.
pub(crate) struct Pipeline<W: Send + 'static, P: Pool> {
    state: State<W, P>,
    /// The buffer being filled.
    buf: Vec<u8>,
    /// True when the filled buffer went to the queue and the caller waits
    /// for the job to hand one back before writing more.
    lent: bool,
    /// The buffer the last job returned, emptied, to fill next.
    spare: Vec<u8>,
    capacity: usize,
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
    /// must happen before another byte is buffered: the buffer holds the
    /// bytes that go before it.
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
    pub(crate) fn new(sink: W, capacity: usize) -> Self {
        Pipeline {
            state: State::Idle(Some(sink)),
            buf: Vec::new(),
            lent: false,
            spare: Vec::new(),
            capacity: capacity.max(1),
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

    /// Accepts bytes into the buffer; waits only when both buffers are out.
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
            // Hand the full buffer over now if that needs no waiting, so it
            // is written while the caller produces the next one. Any error
            // surfaces on the next call: these `n` bytes are accepted.
            let _ = self.poll_send(cx);
        }
        Poll::Ready(Ok(n))
    }

    /// Hands the full buffer over: to a new job when idle, else queued
    /// behind the running job. Waits only for a job that is ending.
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
                if handoff.accepting && handoff.queued.is_none() {
                    handoff.queued = Some(std::mem::take(&mut self.buf));
                    self.lent = true;
                    drop(handoff);
                    shared.1.notify_all();
                    return Poll::Ready(());
                }
            }
            ready!(self.poll_job(cx));
        }
    }

    /// After `poll_send` queued the buffer: waits for the job to hand one
    /// back, or to end.
    fn poll_reclaim(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Busy(_, shared) = &self.state {
            let mut handoff = lock(shared);
            if let Some(free) = handoff.free.take() {
                self.buf = free;
                self.lent = false;
                return Poll::Ready(());
            }
            handoff.waker = Some(cx.waker().clone());
        }
        // Ending, the job hands everything back (see `poll_job`).
        self.poll_job(cx)
    }

    /// Writes out every full buffer and waits for the job in flight,
    /// reporting the first error. A partial buffer stays for the next write
    /// or for the commit, which writes it in the hop it needs anyway:
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

    /// Waits for the job in flight, then sends the buffer and the pending
    /// seek to the pool as one job, with nothing to be queued behind it.
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
        let next = std::mem::take(&mut self.spare);
        let mut buf = std::mem::replace(&mut self.buf, next);
        // Closed from the start: a buffer filled meanwhile waits for this
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
    /// more will come.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Busy(_, shared) = &self.state {
            close(shared);
        }
        self.poll_job(cx)
    }

    /// Waits for the running job to end, recording its outcome and taking
    /// back every buffer.
    fn poll_job(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let State::Busy(handle, shared) = &mut self.state else {
            return Poll::Ready(());
        };
        let outcome = ready!(Pin::new(handle).poll(cx));
        let (free, queued) = {
            let mut handoff = lock(shared);
            (handoff.free.take(), handoff.queued.take())
        };
        if self.lent {
            // An error left the queued buffer unwritten: the error is sticky
            // and the bytes are lost either way.
            self.buf = free.or(queued).unwrap_or_default();
            self.buf.clear();
            self.lent = false;
        }
        self.seeking = false;
        match outcome {
            Ok((sink, buf, result)) => {
                self.spare = buf;
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
        Poll::Ready(())
    }

    /// Sends the filled buffer to the pool. Only when idle and without error.
    fn submit(&mut self) {
        let State::Idle(sink) = &mut self.state else {
            unreachable!("submit while busy")
        };
        let Some(sink) = sink.take() else {
            // The sink was lost with a failed job, which set the error.
            return;
        };
        let next = std::mem::take(&mut self.spare);
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
    /// A job still running stops after its current buffer: what is queued
    /// would be thrown away with the file anyway.
    fn drop(&mut self) {
        if let State::Busy(_, shared) = &self.state {
            lock(shared).queued = None;
            close(shared);
        }
    }
}

/// The job: writes `buf`, then each buffer queued meanwhile (or, once the
/// caller keeps up, within [`LINGER`]), handing every written one back;
/// ends when nothing comes, at the first error, or when the caller closes
/// the queue.
fn write_job<W: Write>(mut sink: W, mut buf: Vec<u8>, shared: &Shared, linger: Duration) -> Job<W> {
    let mut keeping_up = false;
    loop {
        let result = sink.write_all(&buf);
        buf.clear();
        let mut handoff = lock(shared);
        if keeping_up && result.is_ok() {
            handoff = wait_for_next(shared, handoff, linger);
        }
        // A closed queue still has its last buffer written: closing only
        // ends the wait. (A dropped pipeline empties the queue first.)
        let next = match result {
            Ok(()) => handoff.queued.take(),
            Err(_) => None,
        };
        let Some(next) = next else {
            handoff.accepting = false;
            return (sink, buf, result);
        };
        keeping_up = true;
        handoff.free = Some(std::mem::replace(&mut buf, next));
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
/// the time left; only the deadline, a queued buffer or a closed queue
/// ends the wait. A `linger` too long to add to the clock has no
/// deadline.
fn wait_for_next<'a>(
    shared: &'a Shared,
    mut handoff: MutexGuard<'a, Handoff>,
    linger: Duration,
) -> MutexGuard<'a, Handoff> {
    let deadline = Instant::now().checked_add(linger);
    while handoff.accepting && handoff.queued.is_none() {
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
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 16);
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
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), usize::MAX);
        assert_eq!(drive(|cx| p.poll_write(cx, b"abc")).unwrap(), 3);
        assert!(p.buf.capacity() < 1024, "{}", p.buf.capacity());
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(p.take_parts().unwrap().1, b"abc");
    }

    #[test]
    fn a_full_buffer_waits_for_the_job_in_flight() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4);
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

    /// Buffers allocated and alive: the one filling, the spare, the one
    /// the job holds, the one queued or handed back.
    fn buffers_held(p: &Pipeline<Sink, FakePool>) -> usize {
        buffers_held_by(p)
    }

    fn buffers_held_by<W: Write + Send + 'static>(p: &Pipeline<W, FakePool>) -> usize {
        let alloc = |b: &Vec<u8>| usize::from(b.capacity() > 0);
        let mut n = alloc(&p.buf) + alloc(&p.spare);
        if let State::Busy(_, shared) = &p.state {
            let handoff = lock(shared);
            n += 1
                + handoff.queued.as_ref().map_or(0, alloc)
                + handoff.free.as_ref().map_or(0, alloc);
        }
        n
    }

    #[test]
    fn a_buffer_filled_during_a_job_queues_behind_it_without_a_hop() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4);
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

    #[test]
    fn a_stream_is_copied_once_into_two_buffers_used_over_and_over() {
        // 40 buffers' worth, in writes larger than a buffer and in small
        // ones: every buffer the sink sees is one of the same two
        // allocations, so no byte is copied into a fresh buffer or moved
        // between buffers on its way to the file.
        let s = Addresses::default();
        let mut p: Pipeline<Addresses, FakePool> = Pipeline::new(s.clone(), 64);
        let big = [7u8; 1000];
        let mut cx = Context::from_waker(Waker::noop());
        let mut written = 0;
        while written < 40 * 64 {
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
            assert!(buffers_held_by(&p) <= 2);
        }
        drive(|cx| p.poll_flush(cx)).unwrap();
        let seen = s.0.lock().unwrap().clone();
        assert!(seen.len() >= 39, "{} writes", seen.len());
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "two buffers, reused: {seen:x?}");
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
        let mut p: Pipeline<Slow, ThreadPool> = Pipeline::new(Slow(s.clone()), 4);
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
        let mut p: Pipeline<Sink, ThreadPool> = Pipeline::new(s.clone(), 4);
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
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(p.poll_write(&mut cx, b"abcd"), Poll::Ready(Ok(4))));
        assert!(matches!(p.poll_write(&mut cx, b"efgh"), Poll::Ready(Ok(4))));
        drive(|cx| p.poll_flush(cx)).unwrap();
        assert_eq!(&*s.data.lock().unwrap(), b"abcdefgh");
        assert!(p.take_parts().unwrap().1.is_empty());
    }

    #[test]
    fn a_dropped_pipeline_stops_its_job_after_the_current_buffer() {
        let s = sink(usize::MAX, None);
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), 4);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(p.poll_write(&mut cx, b"abcd"), Poll::Ready(Ok(4))));
        assert!(matches!(p.poll_write(&mut cx, b"efgh"), Poll::Ready(Ok(4))));
        drop(p);
        run_jobs();
        assert_eq!(
            &*s.data.lock().unwrap(),
            b"abcd",
            "the queued buffer is dropped"
        );
    }

    #[test]
    fn an_error_with_a_buffer_queued_is_sticky_and_gives_the_buffer_back() {
        let s = sink(usize::MAX, Some(0));
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s, 4);
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
    fn errors_are_sticky_and_kept_whole() {
        let s = sink(usize::MAX, Some(0));
        let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s, 4);
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
        let mut p: Pipeline<NoSpace, FakePool> = Pipeline::new(NoSpace, 4);
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
        let mut p: Pipeline<Sink, LostPool> = Pipeline::new(sink(usize::MAX, None), 2);
        assert_eq!(drive(|cx| p.poll_write(cx, b"ab")).unwrap(), 2);
        let err = drive(|cx| p.poll_flush(cx)).unwrap_err();
        assert_eq!(err.to_string(), "job panicked");
        assert!(p.take_sink().is_none(), "the sink went with the job");
        assert_eq!(p.describe(), "failed");
    }

    proptest! {
        /// Random chunk and buffer sizes, short writes, Pending from the pool:
        /// the sink and the rest left for the commit hold exactly the input,
        /// with at most two buffers.
        #[test]
        fn content_equals_input(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            chunks in proptest::collection::vec(1usize..700, 1..40),
            capacity in 1usize..600,
            max_write in 1usize..300,
            pendings in proptest::collection::vec(0u8..4, 0..64),
        ) {
            PENDING.with(|p| *p.borrow_mut() = pendings);
            let s = sink(max_write, None);
            let mut p: Pipeline<Sink, FakePool> = Pipeline::new(s.clone(), capacity);
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
                    prop_assert!(p.buf.capacity() <= capacity && p.spare.capacity() <= capacity);
                    prop_assert!(buffers_held(&p) <= 2, "{} buffers", buffers_held(&p));
                }
                rest = &rest[len..];
            }
            drive(|cx| p.poll_flush(cx)).unwrap();
            let (_, left) = p.take_parts().unwrap();
            prop_assert!(left.len() < capacity, "a full buffer went out");
            let mut got = s.data.lock().unwrap().clone();
            got.extend_from_slice(&left);
            prop_assert_eq!(got, data);
            run_jobs();
        }
    }
}
