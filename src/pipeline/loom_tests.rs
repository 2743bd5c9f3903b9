//! The hand-off between the caller and the pool job, model-checked with
//! loom: each model below runs under every interleaving of the caller's
//! thread and the jobs' threads, one lock, wait, notify or wake at a time,
//! up to a bound on preemptions. The fake-pool tests run a job whole at a
//! point the test picks; here it runs alongside the caller, which is where
//! a lost wake-up or a buffer handed to nobody would hide.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --lib --release --target-dir target/loom pipeline::loom
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` overrides the bound, for a deeper run by hand.
//!
//! loom's `Condvar::wait_timeout` never times out. A job that lingers with
//! [`Lingers`] therefore waits until it is told (a buffer queued, the
//! queue closed), which is the linger's worst case: a notify that goes
//! missing shows as a deadlock, not as a 1 ms stall. [`NoLinger`] stands
//! for the timeout: its job checks the queue once and ends, at whatever
//! point loom schedules that check, which is every point the timeout could
//! fire. Models assert bytes, errors and hop counts, never timing.
//!
//! A deadlock aborts the whole test binary, not just its model: unwinding
//! drops the pipeline, whose drop locks a loom mutex outside the failed
//! execution. Run the other models one at a time (`--exact`) to see them.

use super::*;
use loom::future::{block_on, AtomicWaker};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread::JoinHandle;
use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Test bookkeeping outside the model: std's, not loom's.
type Seen = std::sync::Arc<AtomicBool>;

/// Preemptions explored per execution, unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise. Each mutation the models were checked against (a notify or
/// a wake-up left out, the caller's waker stored after the lock is let
/// go, a buffer queued to a job that has ended) fails at 1 already; 3
/// keeps the whole run to seconds in release, 4 takes ten times as long.
const PREEMPTION_BOUND: usize = 3;

/// Every segment here is two bytes, so that a few short writes make three
/// or four segments flow through a job or two.
const CAPACITY: usize = 2;

/// A pipeline of `segments` segments of [`CAPACITY`] bytes.
fn pipeline<P: Pool>(disk: &Disk, segments: usize) -> Pipeline<Sink, P> {
    let p = Pipeline::new(disk.sink(), CAPACITY * segments / 2, segments);
    assert_eq!((p.segments, p.capacity), (segments, CAPACITY));
    p
}

/// Checks `f` under every interleaving within the preemption bound, and
/// prints how many there were (`--nocapture` shows it).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTION_BOUND);
    }
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f();
    });
    let executions = executions.load(Ordering::Relaxed);
    println!("{executions} executions");
    assert!(executions > 1, "nothing to interleave");
}

/// A pool whose every job is a loom thread. `LINGERS` picks the job's
/// linger: until it is told (loom never times a wait out), or none.
struct LoomPool<const LINGERS: bool>;

/// Jobs that wait for the next buffer until a notify ends the wait.
type Lingers = LoomPool<true>;

/// Jobs whose linger times out at once.
type NoLinger = LoomPool<false>;

/// Where a job leaves its result, and who to wake for it.
struct Slot<T> {
    value: Mutex<Option<T>>,
    waker: AtomicWaker,
}

struct LoomHandle<T>(Arc<Slot<T>>);

impl<T> Future for LoomHandle<T> {
    type Output = io::Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        // Register first: a job that ends between the look and the
        // registration still wakes this task.
        self.0.waker.register_by_ref(cx.waker());
        match self.0.value.lock().unwrap().take() {
            Some(v) => Poll::Ready(Ok(v)),
            None => Poll::Pending,
        }
    }
}

loom::thread_local! {
    /// The jobs started in this execution (by the model's thread, the only
    /// caller), for the model to join at its end.
    static JOBS: RefCell<Vec<JoinHandle<()>>> = RefCell::new(Vec::new());
}

impl<const LINGERS: bool> Pool for LoomPool<LINGERS> {
    const LINGER: Duration = if LINGERS {
        Duration::MAX
    } else {
        Duration::ZERO
    };
    type Handle<T: Send + 'static> = LoomHandle<T>;
    fn spawn<T, F>(job: F) -> LoomHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let slot = Arc::new(Slot {
            value: Mutex::new(None),
            waker: AtomicWaker::new(),
        });
        let out = Arc::clone(&slot);
        let thread = loom::thread::spawn(move || {
            let v = job();
            *out.value.lock().unwrap() = Some(v);
            out.waker.wake();
        });
        JOBS.with(|jobs| jobs.borrow_mut().push(thread));
        LoomHandle(slot)
    }
}

/// Waits for every job started so far to end, and says how many there
/// were: the pool hops. A job that never ends is a deadlock, which loom
/// reports.
fn join_jobs() -> usize {
    let jobs = JOBS.with(|jobs| std::mem::take(&mut *jobs.borrow_mut()));
    let hops = jobs.len();
    for job in jobs {
        job.join().expect("the job ended");
    }
    hops
}

/// The file behind the sink, and the test's controls over the job that
/// writes it.
#[derive(Default)]
struct DiskState {
    data: Vec<u8>,
    /// A write at or past this offset waits until the test moves the gate:
    /// the job stops at a point the test picks, whatever the interleaving.
    gate: Option<usize>,
    /// A write at or past this offset fails with `StorageFull`.
    fail_at: Option<usize>,
}

/// The test's side of the file; [`Disk::sink`] is the job's.
#[derive(Clone)]
struct Disk(Arc<DiskShared>);

struct DiskShared {
    state: Mutex<DiskState>,
    /// Notified on every write and every move of the gate.
    changed: Condvar,
}

impl Disk {
    fn new(gate: Option<usize>, fail_at: Option<usize>) -> Disk {
        let state = DiskState {
            gate,
            fail_at,
            ..DiskState::default()
        };
        Disk(Arc::new(DiskShared {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }))
    }

    fn sink(&self) -> Sink {
        Sink {
            disk: self.clone(),
            pos: 0,
        }
    }

    /// Lets writes through up to `gate`, or all of them.
    fn open_gate(&self, gate: Option<usize>) {
        self.0.state.lock().unwrap().gate = gate;
        self.0.changed.notify_all();
    }

    /// Waits until the file holds `len` bytes.
    fn wait_for_len(&self, len: usize) {
        let mut state = self.0.state.lock().unwrap();
        while state.data.len() < len {
            state = self.0.changed.wait(state).unwrap();
        }
    }

    /// The file's bytes, as text: every model writes ASCII, and a failed
    /// assertion reads better as `"abef"` than as a list of numbers.
    fn contents(&self) -> String {
        String::from_utf8(self.0.state.lock().unwrap().data.clone()).unwrap()
    }
}

/// A file on the disk with its own position, as a temp file is.
struct Sink {
    disk: Disk,
    pos: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let DiskShared { state, changed } = &*self.disk.0;
        let mut state = state.lock().unwrap();
        while state.gate.is_some_and(|gate| self.pos >= gate) {
            state = changed.wait(state).unwrap();
        }
        if state.fail_at.is_some_and(|at| self.pos >= at) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let end = self.pos + buf.len();
        if state.data.len() < end {
            state.data.resize(end, 0);
        }
        state.data[self.pos..end].copy_from_slice(buf);
        self.pos = end;
        changed.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Sink {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Start(to) = to else {
            unreachable!("the pipeline seeks from the start")
        };
        self.pos = usize::try_from(to).unwrap();
        Ok(to)
    }
}

/// Writes all of `data`, the way `write_all` does on the async file.
fn write<P: Pool>(p: &mut Pipeline<Sink, P>, data: &[u8]) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let n = block_on(poll_fn(|cx| p.poll_write(cx, rest)))?;
        rest = &rest[n..];
    }
    Ok(())
}

fn flush<P: Pool>(p: &mut Pipeline<Sink, P>) -> io::Result<()> {
    block_on(poll_fn(|cx| p.poll_flush(cx)))
}

/// Closes the queue and waits for the job, as a commit does first.
fn close<P: Pool>(p: &mut Pipeline<Sink, P>) {
    block_on(poll_fn(|cx| p.poll_idle(cx)));
}

/// Every segment is back in the pipeline, none lost with a job: the one
/// being filled, and the others spare (full-sized, as they went out) or
/// never allocated.
fn assert_buffers_back<P: Pool>(p: &Pipeline<Sink, P>) {
    assert!(!p.lent, "a segment is still out");
    assert_eq!(
        1 + p.spares.len() + p.unallocated,
        p.segments,
        "a segment is lost"
    );
    for spare in &p.spares {
        assert!(spare.capacity() >= CAPACITY, "a spare is not one sent out");
    }
}

/// One more segment than there are through a job or two: the second is
/// queued while the job writes the first (in the interleavings where the
/// caller is quicker), and so on, until the last waits for a segment to
/// come back. The file holds the input, every segment comes back, and at
/// least one execution did queue them all.
fn buffers_queued_while_the_job_writes<P: Pool>(segments: usize) {
    let queued = Seen::default();
    let seen = Seen::clone(&queued);
    model(move || {
        let disk = Disk::new(None, None);
        let mut p = pipeline::<P>(&disk, segments);
        let chunks = [b"ab", b"cd", b"ef", b"gh"];
        for chunk in &chunks[..=segments] {
            write(&mut p, *chunk).unwrap();
            if p.lent {
                seen.store(true, Ordering::Relaxed);
            }
        }
        flush(&mut p).unwrap();
        assert_eq!(disk.contents(), &"abcdefgh"[..2 * (segments + 1)]);
        assert_buffers_back(&p);
        assert_eq!(p.describe(), "idle");
        assert!(p.take_parts().unwrap().1.is_empty(), "nothing left over");
        let hops = join_jobs();
        assert!((1..=segments + 1).contains(&hops), "{hops} hops");
    });
    assert!(
        queued.load(Ordering::Relaxed),
        "no execution had every segment out"
    );
}

#[test]
fn a_buffer_queued_while_the_job_writes_is_written_and_handed_back() {
    buffers_queued_while_the_job_writes::<Lingers>(2);
}

#[test]
fn a_buffer_queued_while_the_job_writes_is_written_when_the_linger_times_out() {
    buffers_queued_while_the_job_writes::<NoLinger>(2);
}

#[test]
fn three_segments_queued_while_the_job_writes_are_written_and_handed_back() {
    buffers_queued_while_the_job_writes::<Lingers>(3);
}

#[test]
fn three_segments_queued_while_the_job_writes_are_written_when_the_linger_times_out() {
    buffers_queued_while_the_job_writes::<NoLinger>(3);
}

/// Holds the job in its first write until the second buffer is queued
/// (the caller keeps up), then lets it write both: the third buffer, which
/// comes only after both are on disk, finds the job waiting for it.
/// Returns the pipeline with the job still in flight.
fn keep_up<P: Pool>(disk: &Disk) -> Pipeline<Sink, P> {
    let mut p = pipeline::<P>(disk, 2);
    write(&mut p, b"ab").unwrap();
    write(&mut p, b"cd").unwrap();
    assert!(p.lent, "the job is held in its write: the second is queued");
    disk.open_gate(None);
    disk.wait_for_len(4);
    p
}

#[test]
fn a_job_that_kept_up_lingers_for_the_next_buffer_until_a_close() {
    model(|| {
        let disk = Disk::new(Some(0), None);
        let mut p = keep_up::<Lingers>(&disk);
        // The job has written both and lingers (or is about to): it takes
        // this one too.
        write(&mut p, b"ef").unwrap();
        disk.wait_for_len(6);
        // It lingers again; only the close ends that wait.
        close(&mut p);
        assert_eq!(disk.contents(), "abcdef");
        assert_buffers_back(&p);
        assert_eq!(join_jobs(), 1, "one hop for three buffers");
    });
}

#[test]
fn a_linger_that_times_out_loses_nothing() {
    model(|| {
        let disk = Disk::new(Some(0), None);
        let mut p = keep_up::<NoLinger>(&disk);
        // The job ends at its first look at the queue, unless the buffer
        // got there first: a hop more or less, the same bytes.
        write(&mut p, b"ef").unwrap();
        flush(&mut p).unwrap();
        assert_eq!(disk.contents(), "abcdef");
        assert_buffers_back(&p);
        let hops = join_jobs();
        assert!((1..=2).contains(&hops), "{hops} hops");
    });
}

#[test]
fn a_close_while_the_job_runs_writes_what_was_queued_and_ends_the_job() {
    model(|| {
        let disk = Disk::new(None, None);
        let mut p = pipeline::<Lingers>(&disk, 2);
        write(&mut p, b"abcde").unwrap();
        close(&mut p);
        // Every full buffer is on disk, the partial one stays, and the
        // pipeline goes on after the close.
        assert_eq!(p.describe(), "idle");
        assert!(!p.lent);
        assert_eq!(disk.contents(), "abcd");
        assert_eq!(p.buffered(), 1);
        write(&mut p, b"f").unwrap();
        flush(&mut p).unwrap();
        assert_eq!(disk.contents(), "abcdef");
        assert_buffers_back(&p);
        let hops = join_jobs();
        assert!((2..=3).contains(&hops), "{hops} hops");
    });
}

/// The job is held in its first write while every other segment is
/// queued behind it; the pipeline is dropped.
fn dropped_with_segments_queued(segments: usize) {
    model(move || {
        let disk = Disk::new(Some(0), None);
        let mut p = pipeline::<Lingers>(&disk, segments);
        for chunk in [b"ab", b"cd", b"ef"].iter().take(segments) {
            write(&mut p, *chunk).unwrap();
        }
        assert!(p.lent, "the job is held in its write: the rest are queued");
        drop(p);
        disk.open_gate(None);
        assert_eq!(join_jobs(), 1);
        assert_eq!(disk.contents(), "ab", "the queued segments were dropped");
    });
}

#[test]
fn a_dropped_pipeline_with_a_buffer_queued_ends_the_job_after_its_buffer() {
    dropped_with_segments_queued(2);
}

#[test]
fn a_dropped_pipeline_with_two_segments_queued_ends_the_job_after_its_own() {
    dropped_with_segments_queued(3);
}

/// `segments` full segments written, then the pipeline dropped wherever
/// its job is.
fn dropped_anywhere(segments: usize) {
    model(move || {
        let disk = Disk::new(None, None);
        let mut p = pipeline::<Lingers>(&disk, segments);
        let all = "abcdef";
        write(&mut p, &all.as_bytes()[..2 * segments]).unwrap();
        // The job may be writing, lingering, or holding segments in its
        // queue; the last may even be still in the pipeline, waiting for
        // the job to end. Whichever: the job ends after the segment it is
        // writing, without starting another.
        drop(p);
        let hops = join_jobs();
        assert!((1..=segments).contains(&hops), "{hops} hops");
        let data = disk.contents();
        assert!((1..=segments).any(|n| data == all[..2 * n]), "{data:?}");
    });
}

#[test]
fn a_dropped_pipeline_ends_its_job_wherever_it_is() {
    dropped_anywhere(2);
}

#[test]
fn a_dropped_pipeline_of_three_segments_ends_its_job_wherever_it_is() {
    dropped_anywhere(3);
}

/// The second segment fails; the job is held in its first write until
/// every other segment is queued, then before its second until one more
/// is queued behind it.
fn error_with_segments_queued(segments: usize) {
    model(move || {
        let disk = Disk::new(Some(0), Some(2));
        let mut p = pipeline::<Lingers>(&disk, segments);
        let chunks = [b"ab", b"cd", b"ef", b"gh"];
        for chunk in &chunks[..segments] {
            write(&mut p, *chunk).unwrap();
        }
        disk.open_gate(Some(2));
        write(&mut p, chunks[segments]).unwrap();
        assert!(p.lent, "the job is held before its second write: queued");
        disk.open_gate(None);
        let err = write(&mut p, b"gh").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_buffers_back(&p);
        let again = write(&mut p, b"gh").unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::StorageFull, "sticky");
        assert_eq!(
            flush(&mut p).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        let first = p.take_parts().err().expect("the first error");
        assert_eq!(first.to_string(), "disk full");
        assert_eq!(join_jobs(), 1);
        assert_eq!(disk.contents(), "ab");
    });
}

#[test]
fn an_error_with_a_buffer_queued_is_sticky_and_gives_the_buffer_back() {
    error_with_segments_queued(2);
}

#[test]
fn an_error_with_segments_queued_is_sticky_and_gives_every_one_back() {
    error_with_segments_queued(3);
}

#[test]
fn a_seek_between_writes_puts_the_later_bytes_where_it_landed() {
    model(|| {
        let disk = Disk::new(None, None);
        let mut p = pipeline::<Lingers>(&disk, 2);
        write(&mut p, b"abcd").unwrap();
        p.start_seek(SeekFrom::Start(1)).unwrap();
        let at = block_on(poll_fn(|cx| p.poll_complete(cx))).unwrap();
        assert_eq!(at, 1);
        write(&mut p, b"XY").unwrap();
        flush(&mut p).unwrap();
        assert_eq!(disk.contents(), "aXYd");
        assert!(p.take_parts().unwrap().1.is_empty(), "nothing left over");
        let hops = join_jobs();
        assert!((3..=4).contains(&hops), "{hops} hops");
    });
}
