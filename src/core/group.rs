//! Group commit for directory `fsync`s: commits into one directory that are
//! in flight together share one `fsync` of it, instead of each queueing its
//! own behind the filesystem's journal.
//!
//! The rule that keeps it durable: a caller returns only after an `fsync`
//! of the directory that *started after the caller arrived*, that is, after
//! its own rename. Arrivals take a ticket, the number of the next `fsync`
//! to start; while one runs, everyone arriving waits for the next one,
//! which one of them then runs for all. A failed `fsync` fails every commit
//! it covered, with the same error, and is never retried: after a failed
//! `fsync` the kernel may have dropped the dirty state, so a retry can
//! succeed without having written anything.
//!
//! Failures also end the sharing for the commits they may have touched.
//! Linux reports a writeback error to every descriptor open before it, but
//! a shared `fsync` runs on the leader's descriptor, which may be younger.
//! So each commit notes the directory's failure count before its rename;
//! if a failure is recorded after that, the commit `fsync`s its own
//! descriptor, which is sure to report it, instead of (or after) sharing.
//!
//! Plain `std` locks: the callers are blocking-pool threads.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};

/// Which directory: its device and inode numbers.
pub(crate) type DirId = (u64, u64);

/// The directories being synced right now. A group leaves with its last
/// user, so the map holds only directories in use.
static GROUPS: LazyLock<Mutex<HashMap<DirId, Arc<Group>>>> = LazyLock::new(Mutex::default);

/// How many shared `fsync`s of each directory have failed, for the life of
/// the process (only directories with a failure are in it).
static FAILED: LazyLock<Mutex<HashMap<DirId, u64>>> = LazyLock::new(Mutex::default);

/// How many shared `fsync`s of directory `id` have failed so far: what a
/// commit notes before its rename, for [`sync_shared`].
pub(crate) fn failures(id: DirId) -> u64 {
    lock(&FAILED).get(&id).copied().unwrap_or(0)
}

#[derive(Default)]
struct Group {
    state: Mutex<State>,
    synced: Condvar,
}

#[derive(Default)]
struct State {
    /// Callers inside [`sync_shared`] for this directory.
    users: usize,
    /// Whether an `fsync` is running.
    running: bool,
    /// The number the next `fsync` to start will have.
    next: u64,
    /// The number of the last `fsync` that finished; 0 for none (numbers
    /// start at 1).
    done: u64,
    /// Tickets taken for `next`.
    waiting_for_next: usize,
    /// Failed `fsync`s whose callers have not all picked up the error.
    failures: Vec<Failure>,
}

struct Failure {
    number: u64,
    error: Option<io::Error>,
    /// Callers it covered that have not yet taken their copy.
    left: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, the state
    // is still consistent enough to go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns once an `fsync` of directory `id` that started after this call
/// has finished: run by this caller with `sync`, or by another caller for
/// everyone waiting. Its error is every covered caller's error. `seen` is
/// [`failures`] as noted before the caller's rename: if a failure came
/// since, the caller's own `sync` runs (again), see the module docs.
pub(crate) fn sync_shared(
    id: DirId,
    seen: u64,
    sync: impl Fn() -> io::Result<()>,
) -> io::Result<()> {
    if failures(id) != seen {
        return sync();
    }
    let (result, failed_by_then) = shared(id, &sync);
    result?;
    if failed_by_then != seen {
        // A failure while this caller waited: the shared fsync that
        // covered it may have run on a descriptor that could not see it.
        return sync();
    }
    Ok(())
}

/// The shared part: the outcome of the `fsync` that covered this caller,
/// and [`failures`] as it stood when that `fsync` ended.
fn shared(id: DirId, sync: &dyn Fn() -> io::Result<()>) -> (io::Result<()>, u64) {
    let group = {
        let mut groups = lock(&GROUPS);
        let group = Arc::clone(groups.entry(id).or_default());
        lock(&group.state).users += 1;
        group
    };
    let _user = User { id, group: &group };
    group.wait_for_sync(id, sync)
}

/// One caller inside [`sync_shared`]; leaving, even by unwinding, it takes
/// the group out of the map if it was the last.
struct User<'a> {
    id: DirId,
    group: &'a Group,
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let mut groups = lock(&GROUPS);
        let mut state = lock(&self.group.state);
        state.users -= 1;
        if state.users == 0 {
            groups.remove(&self.id);
        }
    }
}

impl Group {
    fn wait_for_sync(&self, id: DirId, sync: &dyn Fn() -> io::Result<()>) -> (io::Result<()>, u64) {
        let mut state = lock(&self.state);
        if state.next == 0 {
            state.next = 1;
        }
        let ticket = state.next;
        state.waiting_for_next += 1;
        loop {
            if state.done >= ticket {
                // Read under the state lock: `Finish` counts a failure and
                // ends its fsync in one step, so this count includes every
                // failure up to the fsync that covered this caller.
                return (state.result_of(ticket), failures(id));
            }
            if state.running {
                state = self
                    .synced
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Nothing runs and ours has not run: ours is the next one
            // (`next == ticket`), and this caller starts it for everyone
            // who took the same ticket.
            let number = state.next;
            debug_assert_eq!(number, ticket);
            state.next += 1;
            state.running = true;
            // `covered` counts the leader too: it collects its result like
            // the others, unless it unwinds (see `Finish`).
            let covered = std::mem::take(&mut state.waiting_for_next);
            drop(state);
            let mut finish = Finish {
                group: self,
                id,
                number,
                covered,
                result: None,
            };
            finish.result = Some(sync());
            drop(finish);
            state = lock(&self.state);
        }
    }
}

impl State {
    /// The outcome of `fsync` number `ticket` for one of the callers it
    /// covered.
    fn result_of(&mut self, ticket: u64) -> io::Result<()> {
        let Some(i) = self.failures.iter().position(|f| f.number == ticket) else {
            return Ok(());
        };
        let failure = &mut self.failures[i];
        failure.left -= 1;
        if failure.left > 0 {
            let e = failure.error.as_ref().expect("kept until the last caller");
            // The errno when there is one (EIO stays EIO), else kind and text.
            return Err(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            });
        }
        // The last caller takes the original, source and all.
        let error = self.failures.swap_remove(i).error;
        Err(error.expect("kept until the last caller"))
    }
}

/// Records the end of `fsync` number `number`, even if it unwound: the
/// waiters must never wait for a leader that is gone.
struct Finish<'a> {
    group: &'a Group,
    id: DirId,
    number: u64,
    covered: usize,
    /// `None` while the `fsync` runs: still `None` when dropped, it
    /// unwound.
    result: Option<io::Result<()>>,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.group.state);
        state.running = false;
        state.done = self.number;
        // Unwinding, the leader never collects its own copy.
        let (error, left) = match self.result.take() {
            Some(Ok(())) => (None, 0),
            Some(Err(e)) => (Some(e), self.covered),
            None => (
                Some(io::Error::other("the directory fsync panicked")),
                self.covered - 1,
            ),
        };
        if error.is_some() {
            // Lock order: GROUPS, a group's state, FAILED.
            *lock(&FAILED).entry(self.id).or_default() += 1;
        }
        if left > 0 {
            state.failures.push(Failure {
                number: self.number,
                error,
                left,
            });
        }
        drop(state);
        self.group.synced.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Barrier;
    use std::thread;
    use std::time::Duration;

    fn id(n: u64) -> DirId {
        (u64::MAX, n)
    }

    /// The first sync of a test: starts when the test releases it, holds
    /// the group until `waiting` callers wait behind it, then gives
    /// `result`. Called again (the caller's own fsync after a failure), it
    /// succeeds at once.
    fn hold(
        dir: DirId,
        waiting: usize,
        release: &Barrier,
        again: &AtomicBool,
        result: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        if again.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        release.wait();
        while lock(&GROUPS)[&dir].state.lock().unwrap().waiting_for_next < waiting {
            thread::sleep(Duration::from_millis(1));
        }
        result()
    }

    #[test]
    fn alone_a_caller_runs_its_own_sync() {
        let runs = AtomicUsize::new(0);
        sync_shared(id(1), 0, || {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!lock(&GROUPS).contains_key(&id(1)), "the group left");
    }

    #[test]
    fn callers_arriving_during_a_sync_share_the_next_one() {
        // The first sync blocks until 7 more callers wait behind it; they
        // must then be served by exactly one more sync, which started after
        // all of them arrived.
        let runs = AtomicUsize::new(0);
        let arrived = AtomicUsize::new(0);
        let release = Barrier::new(2);
        let again = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                arrived.fetch_add(1, Ordering::SeqCst);
                sync_shared(id(2), 0, || {
                    hold(id(2), 7, &release, &again, || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
                .unwrap();
            });
            release.wait();
            for _ in 0..7 {
                s.spawn(|| {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    sync_shared(id(2), 0, || {
                        assert_eq!(arrived.load(Ordering::SeqCst), 8, "started after all");
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .unwrap();
                });
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one sync for the seven");
    }

    #[test]
    fn a_failure_reaches_every_covered_caller_and_no_later_one() {
        let release = Barrier::new(2);
        let again = AtomicBool::new(false);
        let results = Mutex::new(Vec::new());
        thread::scope(|s| {
            s.spawn(|| {
                sync_shared(id(3), 0, || hold(id(3), 4, &release, &again, || Ok(()))).unwrap();
            });
            release.wait();
            for _ in 0..4 {
                s.spawn(|| {
                    let r = sync_shared(id(3), 0, || Err(io::Error::from_raw_os_error(5)));
                    lock(&results).push(r);
                });
            }
        });
        let results = results.into_inner().unwrap();
        assert_eq!(results.len(), 4);
        for r in &results {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(5), "EIO for every covered caller");
        }
        // A later caller gets a sync of its own, not the old failure.
        sync_shared(id(3), failures(id(3)), || Ok(())).unwrap();
        assert!(!lock(&GROUPS).contains_key(&id(3)), "the group left");
    }

    #[test]
    fn after_a_failure_the_callers_who_waited_sync_on_their_own_too() {
        // Sync 1 fails while four callers, who renamed before it, wait for
        // sync 2. That one may run on a descriptor opened after the error
        // and succeed; so each of them also runs its own fsync.
        let release = Barrier::new(2);
        let again = AtomicBool::new(false);
        let own: [AtomicUsize; 4] = Default::default();
        thread::scope(|s| {
            s.spawn(|| {
                let r = sync_shared(id(4), 0, || {
                    hold(id(4), 4, &release, &again, || {
                        Err(io::Error::from_raw_os_error(5))
                    })
                });
                assert_eq!(r.unwrap_err().raw_os_error(), Some(5));
            });
            release.wait();
            for count in &own {
                s.spawn(move || {
                    sync_shared(id(4), 0, || {
                        count.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .unwrap();
                });
            }
        });
        for (i, count) in own.iter().enumerate() {
            assert!(
                count.load(Ordering::SeqCst) >= 1,
                "caller {i} synced itself"
            );
        }
        assert_eq!(failures(id(4)), 1);
        assert!(!lock(&GROUPS).contains_key(&id(4)), "the group left");
    }

    #[test]
    fn a_caller_that_saw_fewer_failures_syncs_alone() {
        // A failure recorded between this caller's rename and its sync (in
        // a group that has gone since): no sharing at all.
        *lock(&FAILED).entry(id(6)).or_default() += 1;
        let runs = AtomicUsize::new(0);
        sync_shared(id(6), 0, || {
            assert!(!lock(&GROUPS).contains_key(&id(6)), "no group joined");
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_sync_leaves_no_group_and_fails_the_others() {
        // Two callers wait for sync 2, both with a sync that panics: the one
        // that leads panics, the other gets an error, and the group leaves.
        let release = Barrier::new(2);
        let again = AtomicBool::new(false);
        thread::scope(|s| {
            let leader =
                s.spawn(|| sync_shared(id(5), 0, || hold(id(5), 2, &release, &again, || Ok(()))));
            release.wait();
            let waiters: Vec<_> = (0..2)
                .map(|_| s.spawn(|| sync_shared(id(5), 0, || -> io::Result<()> { panic!("boom") })))
                .collect();
            leader.join().unwrap().unwrap();
            let outcomes: Vec<_> = waiters.into_iter().map(|w| w.join()).collect();
            let panicked = outcomes.iter().filter(|o| o.is_err()).count();
            assert_eq!(panicked, 1, "the leader of sync 2");
            for outcome in outcomes.into_iter().flatten() {
                let err = outcome.unwrap_err();
                assert!(err.to_string().contains("panicked"), "{err}");
            }
        });
        assert!(!lock(&GROUPS).contains_key(&id(5)), "no group leaked");
    }
}
