//! Feature `tracing`: one span per open and per commit. Without the
//! feature every function here is empty and `Span` a unit struct, so the
//! callers need no `cfg` of their own.
//!
//! Spans are at the `DEBUG` level, named `open` and `commit`, with the
//! target `tokio_atomic_write`. An open records `path` and `durability`; a
//! commit also `bytes` (accepted by the file, in all), and, once done,
//! `fsync_us` and `rename_us` (microseconds in `fsync`s, and in linking and
//! renaming), and `error` if it failed. The span is entered on the
//! blocking-pool thread that does the work. A file dropped with bytes
//! written and neither committed nor rolled back gives a `WARN` event.

use std::path::Path;

use crate::core::Clock;
use crate::{Durability, Error};

#[cfg(feature = "tracing")]
pub(crate) use tracing::Span;

/// Without the feature: a span that is nothing.
#[cfg(not(feature = "tracing"))]
#[derive(Debug, Clone)]
pub(crate) struct Span;

#[cfg(not(feature = "tracing"))]
impl Span {
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        f()
    }
}

/// The span of an open of `path`.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn open(path: &Path, durability: Durability) -> Span {
    #[cfg(feature = "tracing")]
    return tracing::debug_span!(
        target: "tokio_atomic_write",
        "open",
        path = %path.display(),
        durability = ?durability,
    );
    #[cfg(not(feature = "tracing"))]
    Span
}

/// The span of a commit of `bytes` to `path`; the times and the error are
/// recorded by [`committed`] from inside it.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn commit(path: &Path, durability: Durability, bytes: u64) -> Span {
    #[cfg(feature = "tracing")]
    return tracing::debug_span!(
        target: "tokio_atomic_write",
        "commit",
        path = %path.display(),
        durability = ?durability,
        bytes,
        fsync_us = tracing::field::Empty,
        rename_us = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    #[cfg(not(feature = "tracing"))]
    Span
}

/// Records the error of a one-shot write (`write`, `update`) that failed
/// before its commit, at the open step, in the current commit span.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn failed_before_commit(error: &Error) {
    #[cfg(feature = "tracing")]
    Span::current().record("error", tracing::field::display(error));
}

/// A file that accepted `bytes` dropped without `commit` or `rollback`
/// (for a file of a tree: without `finish`): its bytes are discarded. A
/// `WARN` event, since that is usually a bug (a `?` that skipped the
/// commit); a `DEBUG` one while a panic unwinds, which explains it.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn discarded(path: &Path, bytes: u64) {
    #[cfg(feature = "tracing")]
    {
        if bytes == 0 {
            return;
        }
        let message =
            "dropped unfinished (no commit, rollback or finish): the bytes written are discarded";
        if std::thread::panicking() {
            tracing::debug!(target: "tokio_atomic_write", path = %path.display(), bytes, "{message}");
        } else {
            tracing::warn!(target: "tokio_atomic_write", path = %path.display(), bytes, "{message}");
        }
    }
}

/// Records the bytes of a copy in the current commit span, once known.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn copied(bytes: u64) {
    #[cfg(feature = "tracing")]
    Span::current().record("bytes", bytes);
}

/// Records where the commit in the current span spent its time, and its
/// error.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn committed(clock: &Clock, error: Option<&Error>) {
    #[cfg(feature = "tracing")]
    {
        let span = Span::current();
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        span.record("fsync_us", micros(clock.sync));
        span.record("rename_us", micros(clock.publish));
        if let Some(e) = error {
            span.record("error", tracing::field::display(e));
        }
    }
}
