//! The only caller of `spawn_blocking`: the Tokio [`Pool`], one-hop jobs,
//! and cleanup from `Drop`.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::path::Path;

use tokio::task::{JoinError, JoinHandle};

use crate::pipeline::Pool;
use crate::{Error, Op};

thread_local! {
    /// Jobs this thread has sent to the blocking pool.
    static HOPS: Cell<u64> = const { Cell::new(0) };
}

/// How many jobs the calling thread has sent to the blocking pool. For the
/// crate's own tests (each async operation is one hop); not an API.
pub(crate) fn hops_from_this_thread() -> u64 {
    HOPS.with(Cell::get)
}

/// Tokio's blocking pool.
pub(crate) struct TokioPool;

/// A blocking job's [`JoinHandle`], failing with an `io::Error` when the job
/// panicked or the runtime shut down before running it.
///
/// Dropped before its result was taken, it hands the `JoinHandle` to the
/// pool: a result already there (a `Staged` whose drop removes a temp file)
/// is then dropped on a pool thread, never on the async caller's.
pub(crate) struct Handle<T: Send + 'static>(Option<JoinHandle<T>>);

impl<T: Send + 'static> Future for Handle<T> {
    type Output = io::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let handle = self.0.as_mut().expect("polled after completion");
        let out = std::task::ready!(Pin::new(handle).poll(cx));
        self.0 = None;
        Poll::Ready(out.map_err(join_error))
    }
}

impl<T: Send + 'static> Drop for Handle<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            drop_in_background(handle);
        }
    }
}

/// The source of the error for a job that panicked: the only kind of lost
/// job whose effects are unknown.
#[derive(Debug)]
struct Panicked;

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the blocking task panicked")
    }
}

impl std::error::Error for Panicked {}

/// The error for a job lost on the pool (`e` from a [`Handle`]) that would
/// have committed to `path`: [`Op::Commit`] when it panicked, its outcome
/// unknown; `op` when it never ran (nothing happened but its guard's
/// cleanup).
pub(crate) fn lost_commit(op: Op, path: &Path, e: io::Error) -> Error {
    let panicked = e.get_ref().is_some_and(|inner| inner.is::<Panicked>());
    Error::new(if panicked { Op::Commit } else { op }, path, e)
}

fn join_error(e: JoinError) -> io::Error {
    if e.is_panic() {
        io::Error::other(Panicked)
    } else {
        io::Error::other("the blocking task did not run: the runtime is shutting down")
    }
}

impl Pool for TokioPool {
    type Handle<T: Send + 'static> = Handle<T>;

    fn spawn<T, F>(job: F) -> Handle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        HOPS.with(|h| h.set(h.get() + 1));
        Handle(Some(tokio::task::spawn_blocking(job)))
    }
}

/// Runs `job` on the blocking pool: one hop. If the awaiting future is
/// dropped, the job still runs to the end, and whatever it returns is
/// dropped on the pool (a `Staged` removing its temp file).
pub(crate) fn run<T, F>(job: F) -> Handle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    TokioPool::spawn(job)
}

/// Runs `job` on the blocking pool, one hop, and awaits nothing: for a job
/// that reports on its own (a [`StateFile`](crate::StateFile)'s commits)
/// and returns nothing to drop. Unlike dropping a [`Handle`], this costs
/// no second job. If the runtime drops the job unrun, dropping it is its
/// cleanup.
#[cfg(feature = "serde")]
pub(crate) fn spawn_detached(job: impl FnOnce() + Send + 'static) {
    HOPS.with(|h| h.set(h.get() + 1));
    drop(tokio::task::spawn_blocking(job));
}

/// Drops `value` (a cleanup guard) off the caller's thread when called
/// inside a runtime, synchronously outside one; never `block_on`. If the
/// runtime is shutting down and drops the job unrun, dropping the job drops
/// `value`, so the cleanup still happens.
pub(crate) fn drop_in_background<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(move || drop(value))),
        Err(_) => drop(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit job that panics may have published: the error says so.
    /// One that never ran (the runtime shut down) published nothing.
    #[test]
    fn a_panicked_commit_is_of_unknown_outcome() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(async { run(|| -> () { panic!("a bug in a commit") }).await })
            .unwrap_err();
        let err = lost_commit(Op::Write, Path::new("t"), e);
        assert_eq!(err.op(), Op::Commit);
        assert!(!err.is_published());
        assert!(err.to_string().contains("unknown"), "{err}");

        let never_ran = io::Error::other("the runtime is shutting down");
        let err = lost_commit(Op::Write, Path::new("t"), never_ran);
        assert_eq!(err.op(), Op::Write);
    }
}
