//! Group commit of a value kept in a file ([`StateFile`](crate::StateFile)):
//! a pure state machine, stepped by the shell (or by a test, by hand).
//!
//! Updates are applied in order to a working copy, and numbered. One batch
//! is in flight at a time: a snapshot of the working copy, covering every
//! update applied until it was taken. Its outcome answers those updates:
//!
//! - committed: they succeed, and the snapshot is the committed value;
//! - published but of unknown durability ([`Error::is_published`], a failed
//!   directory sync): they fail with that error, but the snapshot is what
//!   the file holds, so it is the committed value, and the working copy
//!   keeps every change;
//! - failed: they fail, and so does every update applied after the
//!   snapshot (each ran on top of the lost changes); the working copy goes
//!   back to the committed value.
//!
//! Nothing here blocks, sleeps or knows of Tokio: a waiter `W` is whatever
//! the shell answers an update through.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::Error;

/// The group-commit state of one value.
#[derive(Debug)]
pub(crate) struct Batches<T, W> {
    /// Every update applied so far, in order.
    working: T,
    /// What the file holds: the last snapshot committed (or published).
    committed: Arc<T>,
    /// The last snapshot taken for a commit (or, after a failed one, the
    /// committed value): the working copy is this plus the updates
    /// numbered above `taken`, which is what a panic in `f` goes back to.
    last: Arc<T>,
    /// How many updates have been applied (the last one's number).
    applied: u64,
    /// How many are in the last batch taken: in flight, or answered.
    taken: u64,
    /// Whether a batch is in flight (taken, not finished).
    running: bool,
    /// The waiters of updates not answered yet, by number, in order.
    waiting: VecDeque<(u64, W)>,
}

/// A batch in flight: the value to write, and the last update it covers.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub(crate) value: Arc<T>,
    through: u64,
}

/// An update whose `f` panicked: the panic to resume in its caller, once
/// the updates undone with it are answered.
pub(crate) struct Panicked<W> {
    pub(crate) payload: Box<dyn std::any::Any + Send>,
    pub(crate) answers: Vec<(W, Result<(), Error>)>,
}

/// What to do once a batch has finished.
#[derive(Debug)]
pub(crate) struct Finished<T, W> {
    /// The new committed value, when it changed: to publish to readers
    /// before any waiter is answered.
    pub(crate) committed: Option<Arc<T>>,
    /// The waiters to answer, and how.
    pub(crate) answers: Vec<(W, Result<(), Error>)>,
}

impl<T: Clone, W> Batches<T, W> {
    /// Starts from `value`, which the file holds (or stands for, when there
    /// is no file yet).
    pub(crate) fn new(value: T) -> Self {
        let committed = Arc::new(value);
        Batches {
            working: T::clone(&committed),
            last: committed.clone(),
            committed,
            applied: 0,
            taken: 0,
            running: false,
            waiting: VecDeque::new(),
        }
    }

    /// The last committed value.
    pub(crate) fn committed(&self) -> &Arc<T> {
        &self.committed
    }

    /// Applies `f` to the working copy, and queues `waiter` for the batch
    /// that will carry the change. Returns `f`'s result, and whether the
    /// caller must start a batch (none is in flight): then it is marked in
    /// flight, and the caller must [`take`](Self::take) until it returns
    /// `None`.
    ///
    /// A panic in `f` may leave the working copy half changed, and no copy
    /// of it is taken before `f` runs (that would cost a clone of `T` per
    /// update): the working copy goes back to the last snapshot taken for
    /// a commit (the committed value, when nothing is in flight), which
    /// undoes the updates applied since then. Those fail with `undone()`'s
    /// error ([`Op::Apply`](crate::Op::Apply)); the batch in flight, if
    /// any, goes on. With one caller at a time nothing but `f`'s own
    /// update is undone.
    pub(crate) fn apply<R>(
        &mut self,
        f: impl FnOnce(&mut T) -> R,
        waiter: W,
        undone: impl Fn() -> Error,
    ) -> Result<(R, bool), Panicked<W>> {
        match catch_unwind(AssertUnwindSafe(|| f(&mut self.working))) {
            Ok(out) => {
                self.applied += 1;
                self.waiting.push_back((self.applied, waiter));
                let start = !self.running;
                self.running = true;
                Ok((out, start))
            }
            Err(payload) => {
                drop(waiter);
                self.working = T::clone(&self.last);
                // The waiting are in order: those past `taken` are queued.
                let first = self.waiting.partition_point(|(n, _)| *n <= self.taken);
                let answers = self
                    .waiting
                    .drain(first..)
                    .map(|(_, w)| (w, Err(undone())))
                    .collect();
                self.applied = self.taken;
                Err(Panicked { payload, answers })
            }
        }
    }

    /// The next batch: a snapshot of the working copy covering every update
    /// applied and not yet taken. `None` when there is none: then no batch
    /// is in flight any more.
    pub(crate) fn take(&mut self) -> Option<Batch<T>> {
        debug_assert!(self.running, "take only while a batch is started");
        if self.applied == self.taken {
            self.running = false;
            return None;
        }
        self.taken = self.applied;
        self.last = Arc::new(self.working.clone());
        Some(Batch {
            value: self.last.clone(),
            through: self.applied,
        })
    }

    /// Ends `batch` with the outcome of its commit; see the module's docs.
    pub(crate) fn finish(&mut self, batch: Batch<T>, outcome: Result<(), Error>) -> Finished<T, W> {
        let carried = self.waiting.partition_point(|(n, _)| *n <= batch.through);
        let (committed, answered, error) = match outcome {
            Ok(()) => (Some(batch.value), carried, None),
            Err(e) if e.is_published() => (Some(batch.value), carried, Some(e)),
            Err(e) => {
                // Every change since the last commit is lost, those applied
                // after this batch's snapshot included: start again from
                // what the file holds.
                self.working = T::clone(&self.committed);
                self.last = self.committed.clone();
                self.taken = self.applied;
                (None, self.waiting.len(), Some(e))
            }
        };
        let committed = committed.map(|value| {
            self.committed = value;
            self.committed.clone()
        });
        let waiters: Vec<W> = self.waiting.drain(..answered).map(|(_, w)| w).collect();
        let answers = match error {
            None => waiters.into_iter().map(|w| (w, Ok(()))).collect(),
            // The first waiter gets the error itself, the others a copy
            // (the same step, path and cause).
            Some(e) => {
                let copies: Vec<_> = (1..waiters.len()).map(|_| Err(e.duplicate())).collect();
                let results = std::iter::once(Err(e)).chain(copies);
                waiters.into_iter().zip(results).collect()
            }
        };
        Finished { committed, answers }
    }

    /// Gives up the batch in flight, whose commit was lost (its job never
    /// ran, or panicked): as a failed commit with `error`, and no batch is
    /// in flight any more.
    pub(crate) fn abandon(&mut self, error: Error) -> Vec<(W, Result<(), Error>)> {
        self.running = false;
        let batch = Batch {
            value: self.committed.clone(),
            through: self.applied,
        };
        self.finish(batch, Err(error)).answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;
    use std::io;
    use std::path::Path;

    type Log = Batches<Vec<u32>, u32>;

    fn undone() -> Error {
        Error::new(
            Op::Apply,
            Path::new("state.json"),
            io::Error::other("undone"),
        )
    }

    /// `apply` that must not panic.
    fn apply(b: &mut Log, f: impl FnOnce(&mut Vec<u32>) -> usize, w: u32) -> (usize, bool) {
        b.apply(f, w, undone).ok().expect("f did not panic")
    }

    fn push(n: u32) -> impl FnOnce(&mut Vec<u32>) -> usize {
        move |v| {
            v.push(n);
            v.len()
        }
    }

    fn failed() -> Error {
        Error::new(
            Op::Rename,
            Path::new("state.json"),
            io::Error::from_raw_os_error(5),
        )
    }

    fn sync_dir_failed() -> Error {
        Error::after_publish(
            Op::SyncDir,
            Path::new("state.json"),
            io::Error::from_raw_os_error(5),
        )
    }

    /// Which waiters succeeded, and which failed with which step.
    fn outcome(answers: &[(u32, Result<(), Error>)]) -> Vec<(u32, Option<Op>)> {
        answers
            .iter()
            .map(|(w, r)| (*w, r.as_ref().err().map(Error::op)))
            .collect()
    }

    #[test]
    fn one_update_is_one_batch_started_at_once() {
        let mut b = Log::new(vec![]);
        assert_eq!(apply(&mut b, push(1), 10), (1, true));
        let batch = b.take().unwrap();
        assert_eq!(*batch.value, vec![1]);
        let done = b.finish(batch, Ok(()));
        assert_eq!(*done.committed.unwrap(), vec![1]);
        assert_eq!(outcome(&done.answers), [(10, None)]);
        assert!(b.take().is_none(), "nothing more: the batch loop ends");
        // The next update starts a batch again.
        assert_eq!(apply(&mut b, push(2), 11), (2, true));
    }

    #[test]
    fn updates_applied_during_a_commit_share_the_next_one() {
        let mut b = Log::new(vec![]);
        assert!(apply(&mut b, push(1), 1).1);
        let first = b.take().unwrap();
        // Applied while the first is in flight: none starts a batch.
        for n in 2..=4 {
            assert!(!apply(&mut b, push(n), n).1);
        }
        assert_eq!(**b.committed(), Vec::<u32>::new(), "not committed yet");
        let done = b.finish(first, Ok(()));
        assert_eq!(outcome(&done.answers), [(1, None)]);
        assert_eq!(**b.committed(), vec![1]);
        let second = b.take().unwrap();
        assert_eq!(*second.value, vec![1, 2, 3, 4]);
        let done = b.finish(second, Ok(()));
        assert_eq!(outcome(&done.answers), [(2, None), (3, None), (4, None)]);
        assert!(b.take().is_none());
    }

    #[test]
    fn a_failed_commit_fails_its_updates_and_those_applied_after_it() {
        let mut b = Log::new(vec![0]);
        apply(&mut b, push(1), 1);
        apply(&mut b, push(2), 2);
        let batch = b.take().unwrap();
        apply(&mut b, push(3), 3); // ran on top of 1 and 2
        let done = b.finish(batch, Err(failed()));
        assert!(done.committed.is_none());
        assert_eq!(
            outcome(&done.answers),
            [
                (1, Some(Op::Rename)),
                (2, Some(Op::Rename)),
                (3, Some(Op::Rename))
            ]
        );
        for (_, r) in &done.answers {
            let e = r.as_ref().unwrap_err();
            assert_eq!(
                (e.path(), e.io_error().raw_os_error()),
                (Path::new("state.json"), Some(5))
            );
        }
        assert!(b.take().is_none(), "nothing left to commit");
        // Later updates start from what the file holds.
        assert_eq!(apply(&mut b, push(4), 4), (2, true));
        assert_eq!(*b.take().unwrap().value, vec![0, 4]);
    }

    #[test]
    fn a_published_commit_of_unknown_durability_keeps_every_change() {
        let mut b = Log::new(vec![]);
        apply(&mut b, push(1), 1);
        let batch = b.take().unwrap();
        apply(&mut b, push(2), 2);
        let done = b.finish(batch, Err(sync_dir_failed()));
        assert_eq!(*done.committed.unwrap(), vec![1], "what the file holds");
        let answers = outcome(&done.answers);
        assert_eq!(answers, [(1, Some(Op::SyncDir))], "only the batch's own");
        assert!(done.answers[0].1.as_ref().unwrap_err().is_published());
        // The next commit carries both changes, and syncs again.
        let next = b.take().unwrap();
        assert_eq!(*next.value, vec![1, 2]);
        assert_eq!(outcome(&b.finish(next, Ok(())).answers), [(2, None)]);
    }

    fn panicking(v: &mut Vec<u32>) -> usize {
        v.push(99);
        panic!("a bug in f")
    }

    #[test]
    fn a_panic_in_f_alone_undoes_its_change_and_nothing_else() {
        let mut b = Log::new(vec![]);
        apply(&mut b, push(1), 1);
        let batch = b.take().unwrap();
        b.finish(batch, Ok(()));
        assert!(b.take().is_none());
        let Err(p) = b.apply(panicking, 2, undone) else {
            panic!("f panicked")
        };
        assert_eq!(p.payload.downcast_ref::<&str>(), Some(&"a bug in f"));
        assert!(p.answers.is_empty(), "nothing else to undo");
        assert_eq!(
            apply(&mut b, push(3), 3),
            (2, true),
            "from [1], not [1, 99]"
        );
        assert_eq!(*b.take().unwrap().value, vec![1, 3]);
    }

    #[test]
    fn a_panic_in_f_undoes_the_updates_queued_since_the_last_snapshot() {
        let mut b = Log::new(vec![]);
        apply(&mut b, push(1), 1);
        let in_flight = b.take().unwrap();
        apply(&mut b, push(2), 2); // queued: undone with the panic
        let Err(p) = b.apply(panicking, 3, undone) else {
            panic!("f panicked")
        };
        assert_eq!(outcome(&p.answers), [(2, Some(Op::Apply))]);
        // The batch in flight goes on, and answers its own update.
        let done = b.finish(in_flight, Ok(()));
        assert_eq!(outcome(&done.answers), [(1, None)]);
        assert!(b.take().is_none(), "2 was undone: nothing left");
        assert_eq!(apply(&mut b, push(4), 4), (2, true));
        assert_eq!(*b.take().unwrap().value, vec![1, 4]);
    }

    #[test]
    fn an_abandoned_batch_fails_everyone_and_ends() {
        let mut b = Log::new(vec![]);
        apply(&mut b, push(1), 1);
        let _lost = b.take().unwrap();
        apply(&mut b, push(2), 2);
        let answers = b.abandon(failed());
        assert_eq!(
            outcome(&answers),
            [(1, Some(Op::Rename)), (2, Some(Op::Rename))]
        );
        assert_eq!(
            apply(&mut b, push(3), 3),
            (1, true),
            "from the committed value"
        );
    }
}
