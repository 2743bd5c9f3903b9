//! The requests behind the shell: the location check, the conditional put
//! that can tell its own lost answer from a lost race, and `update`'s loop.
//!
//! A conditional put whose answer is lost (a timeout, a cut connection),
//! or which the client retries after its first try landed, cannot tell
//! from the answer alone whether it published: the retry sees its own
//! write as a conflict. So every conditional put carries a stamp in the
//! object's metadata: a count of the stamped writes, and random tokens of
//! the last [`RECENT`] of them, its own last. After an unclear answer the
//! object is read back: its token there means the put landed; absent,
//! with fewer than [`RECENT`] stamped writes since the version it
//! replaced, it did not; absent with more, nobody can tell, and the error
//! says so rather than guess. Comparing bytes would not do: two
//! incrementers that read 41 both write 42.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, PutMode, PutOptions,
    PutPayload, PutResult, UpdateVersion,
};

use super::ObjectOptions;
use crate::{Error, Op};

/// The metadata key of the stamp (`x-amz-meta-tokioatomicwrite` on S3):
/// letters only, which every store takes as a metadata name (Azure's must
/// be identifiers; some proxies drop headers with underscores).
pub(crate) const STAMP_KEY: &str = "tokioatomicwrite";

/// How many tokens of past writes an object carries: about 1.1 KB, within
/// S3's 2 KB of user metadata.
const RECENT: usize = 32;

/// S3's longest key, in bytes (GCS and Azure take 1024 too).
const MAX_LOCATION_BYTES: usize = 1024;

/// The first pause after a lost race; it doubles up to [`MAX_BACKOFF`],
/// each pause jittered between half and all of it.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

pub(crate) fn location_path(location: &ObjectPath) -> PathBuf {
    PathBuf::from(location.as_ref())
}

/// Rejects a location no request should be sent for: an empty one
/// addresses the bucket itself on S3 (a PUT there answers 409, a GET lists
/// the bucket), and one longer than S3's 1024 bytes would fail late.
pub(crate) fn check_location(location: &ObjectPath) -> Result<(), Error> {
    let raw = location.as_ref();
    let why = if raw.is_empty() {
        Some("an empty location names no object (on S3, the bucket itself)".to_string())
    } else if raw.len() > MAX_LOCATION_BYTES {
        Some(format!(
            "a location of {} bytes is longer than object stores take ({MAX_LOCATION_BYTES})",
            raw.len()
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::new(
            Op::Open,
            location_path(location),
            io::Error::new(io::ErrorKind::InvalidInput, why),
        )),
        None => Ok(()),
    }
}

/// Rejects a location, or options, no request should be sent for.
pub(crate) fn check(options: &ObjectOptions, location: &ObjectPath) -> Result<(), Error> {
    check_location(location)?;
    match &options.if_version {
        Some(v) if v.e_tag.is_none() && v.version.is_none() => Err(Error::new(
            Op::Open,
            location_path(location),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "if_version names no version: neither an ETag nor a version id",
            ),
        )),
        _ => Ok(()),
    }
}

/// The kind an `object_store` error maps to: its own `From` maps only
/// `NotFound`.
fn kind_of(e: &object_store::Error) -> io::ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        E::InvalidPath { .. } => io::ErrorKind::InvalidInput,
        E::NotSupported { .. } | E::NotImplemented { .. } => io::ErrorKind::Unsupported,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    }
}

/// An `object_store` error at step `op` of the write of `location`.
pub(crate) fn store_error(op: Op, location: &ObjectPath, e: object_store::Error) -> Error {
    Error::new(op, location_path(location), io::Error::new(kind_of(&e), e))
}

/// A random 128-bit token, in hex: std's random hasher keys, a clock and a
/// counter (no dependency for 16 random bytes).
pub(crate) fn random_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let a = RandomState::new().hash_one((n, nanos, std::process::id()));
    let b = RandomState::new().hash_one((a, n));
    format!("{a:016x}{b:016x}")
}

fn is_token(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fraction in [0, 1) for jitter.
fn jitter() -> f64 {
    (RandomState::new().hash_one(random_token()) >> 11) as f64 / (1u64 << 53) as f64
}

/// An object's stamp: how many stamped writes it has seen, and the tokens
/// of the last ones, oldest first. `None` when it carries none (written by
/// someone else, or a store that keeps no metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    count: u64,
    tokens: Vec<String>,
}

impl Stamp {
    /// Parses `"{count} {token} {token} ..."`; anything else is no stamp.
    /// Only tokens of the crate's shape are carried on, so a foreign value
    /// under the key cannot grow past the metadata limit.
    fn parse(value: &str) -> Option<Stamp> {
        let mut fields = value.split(' ').filter(|f| !f.is_empty());
        let count = fields.next()?.parse().ok()?;
        let tokens = fields.filter(|t| is_token(t)).map(str::to_string).collect();
        Some(Stamp { count, tokens })
    }

    /// The stamp of a write of `token` over this one.
    fn next(&self, token: &str) -> String {
        let keep = self.tokens.len().saturating_sub(RECENT - 1);
        let mut value = (self.count + 1).to_string();
        for t in self.tokens[keep..]
            .iter()
            .map(String::as_str)
            .chain([token])
        {
            value.push(' ');
            value.push_str(t);
        }
        value
    }
}

/// What is at a location, as a conditional write needs it.
pub(crate) struct Current {
    /// `None` when there is no object.
    pub(crate) bytes: Option<Vec<u8>>,
    pub(crate) version: UpdateVersion,
    pub(crate) stamp: Option<Stamp>,
    /// Its attributes but the stamp: carried on by the next write.
    pub(crate) attributes: Attributes,
}

impl Current {
    /// Nothing at the location: what a no-clobber write replaces.
    pub(crate) fn absent() -> Current {
        Current {
            bytes: None,
            version: UpdateVersion {
                e_tag: None,
                version: None,
            },
            stamp: None,
            attributes: Attributes::new(),
        }
    }
}

/// Reads the object (or only its head) with its version and stamp. With
/// `limit`, an object larger than it is refused before its body is read.
pub(crate) async fn current(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    head: bool,
    limit: Option<usize>,
) -> Result<Current, Error> {
    let options = GetOptions {
        head,
        ..GetOptions::default()
    };
    match store.get_opts(location, options).await {
        Ok(got) => {
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let key = Attribute::Metadata(STAMP_KEY.into());
            let stamp = got
                .attributes
                .get(&key)
                .and_then(|v| Stamp::parse(v.as_ref()));
            let attributes: Attributes = got
                .attributes
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(limit) = limit {
                if got.meta.size > limit as u64 {
                    return Err(too_large(Op::Read, location, got.meta.size, limit));
                }
            }
            let bytes = if head {
                Some(Vec::new())
            } else {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| store_error(Op::Read, location, e))?;
                Some(bytes.to_vec())
            };
            Ok(Current {
                bytes,
                version,
                stamp,
                attributes,
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Current::absent()),
        Err(e) => Err(store_error(Op::Read, location, e)),
    }
}

/// One conditional write: its token, whether its store keeps metadata,
/// and the count of the write it replaces once a try went unanswered.
pub(crate) struct Conditional {
    token: String,
    /// Whether the put carries attributes; a store that rejects them
    /// (`LocalFileSystem`) gets the put without, and there no answer is
    /// lost.
    with_stamp: bool,
    /// The stamp count of the version a try replaced whose answer was
    /// unclear: its write may have landed.
    unanswered: Option<u64>,
    /// Set once an error said whether it landed cannot be told.
    undecidable: bool,
}

/// How a conditional put ended.
pub(crate) enum Outcome {
    /// Published (possibly by an earlier try whose answer was lost).
    Put(PutResult),
    /// Another writer got there first: the object exists (`Create`) or has
    /// another version (`Update`). The error says which.
    Lost(object_store::Error),
}

/// What a look at the object tells of this write.
enum Seen {
    Landed(PutResult),
    NotLanded,
    /// Its token is gone, pushed out by [`RECENT`] later writes, or never
    /// kept: it may have landed.
    Unknown(String),
}

impl Conditional {
    pub(crate) fn new() -> Self {
        Conditional {
            token: random_token(),
            with_stamp: true,
            unanswered: None,
            undecidable: false,
        }
    }

    /// This write's result if `now` carries its token.
    fn found(&self, now: &Current) -> Option<PutResult> {
        let stamp = now.stamp.as_ref().filter(|_| self.with_stamp)?;
        if !stamp.tokens.contains(&self.token) {
            return None;
        }
        // The version is ours only while our write is the last.
        let ours = stamp.tokens.last() == Some(&self.token);
        Some(PutResult {
            e_tag: now.version.e_tag.clone().filter(|_| ours),
            version: now.version.version.clone().filter(|_| ours),
            extensions: Default::default(),
        })
    }

    /// What `now` says of this write, once a try went unanswered.
    fn seen(&self, now: &Current) -> Seen {
        if let Some(put) = self.found(now) {
            return Seen::Landed(put);
        }
        let Some(replaced) = self.unanswered.filter(|_| self.with_stamp) else {
            return Seen::NotLanded;
        };
        match &now.stamp {
            Some(stamp) if stamp.count < replaced + 1 + RECENT as u64 => Seen::NotLanded,
            Some(stamp) => Seen::Unknown(format!(
                "{} stamped writes landed since the one it replaced, more than the {RECENT} \
                 an object remembers",
                stamp.count.saturating_sub(replaced)
            )),
            None if now.bytes.is_none() => Seen::NotLanded,
            None => Seen::Unknown(
                "the object carries no write stamp (written without this crate, or a store \
                 that keeps no metadata)"
                    .to_string(),
            ),
        }
    }

    fn unknown(
        &mut self,
        location: &ObjectPath,
        why: String,
        e: Option<&object_store::Error>,
    ) -> Error {
        self.undecidable = true;
        let cause = e.map(|e| format!(" (after: {e})")).unwrap_or_default();
        Error::new(
            Op::Put,
            location_path(location),
            io::Error::other(format!(
                "the put's answer was lost and whether it landed cannot be told: {why}{cause}"
            )),
        )
    }

    /// Whether an earlier try of this write landed, as `now` shows: its
    /// result, or an error when that cannot be told (then `f` must not run
    /// again).
    pub(crate) fn landed(
        &mut self,
        location: &ObjectPath,
        now: &Current,
    ) -> Result<Option<PutResult>, Error> {
        match self.seen(now) {
            Seen::Landed(put) => Ok(Some(put)),
            Seen::NotLanded => Ok(None),
            Seen::Unknown(why) => Err(self.unknown(location, why, None)),
        }
    }

    /// Puts `bytes` with `mode` (`Create` or `Update`) over `replaced`
    /// (what the caller read; for a no-clobber write, nothing). A
    /// conflict, or an answer that may have been lost, is checked against
    /// what is at the location before it is believed.
    pub(crate) async fn put(
        &mut self,
        store: &dyn ObjectStore,
        location: &ObjectPath,
        bytes: &PutPayload,
        mode: PutMode,
        replaced: &Current,
    ) -> Result<Outcome, Error> {
        let base = replaced.stamp.clone().unwrap_or_default();
        // A `Create` refused by an object that is not there (S3's 409 for
        // a conflicting request in flight maps to `AlreadyExists` too) is
        // tried again, a few times.
        let mut creates_left = 3;
        loop {
            let mut attributes = replaced.attributes.clone();
            if self.with_stamp {
                attributes.insert(
                    Attribute::Metadata(STAMP_KEY.into()),
                    AttributeValue::from(base.next(&self.token)),
                );
            }
            let with_attributes = !attributes.is_empty();
            let options = PutOptions {
                mode: mode.clone(),
                attributes,
                ..PutOptions::default()
            };
            let e = match store.put_opts(location, bytes.clone(), options).await {
                Ok(put) => return Ok(Outcome::Put(put)),
                Err(e) => e,
            };
            match e {
                // A store that keeps no metadata: without, once.
                object_store::Error::NotImplemented { .. }
                    if with_attributes && self.with_stamp =>
                {
                    self.with_stamp = false;
                    continue;
                }
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. } => {
                    // A definite answer, but the client may have retried a
                    // try that landed: look at once. Our token there means
                    // it did; absent, it did not (the look comes right
                    // after, so no later write can have pushed it out
                    // unnoticed, and a write without a stamp over ours
                    // replaced it whole anyway).
                    let now = current(store, location, true, None).await?;
                    if let Some(put) = self.found(&now) {
                        return Ok(Outcome::Put(put));
                    }
                    if matches!(mode, PutMode::Create) && now.bytes.is_none() && creates_left > 0 {
                        creates_left -= 1;
                        continue;
                    }
                    return Ok(Outcome::Lost(e));
                }
                e if unclear(&e) => {
                    self.unanswered.get_or_insert(base.count);
                    let now = current(store, location, true, None).await;
                    return match now.map(|now| self.seen(&now)) {
                        Ok(Seen::Landed(put)) => Ok(Outcome::Put(put)),
                        Ok(Seen::Unknown(why)) => Err(self.unknown(location, why, Some(&e))),
                        _ => Err(store_error(Op::Put, location, e)),
                    };
                }
                e => return Err(store_error(Op::Put, location, e)),
            }
        }
    }
}

/// Whether a failed request may nevertheless have landed: anything but a
/// definite answer from the store. `object_store` reports transport
/// errors, timeouts and 5xx as `Generic`, and some definite refusals too
/// (a 400): those are taken as unclear, looked at, and retried by
/// `update` like a lost race, up to its tries.
fn unclear(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
}

/// The conditional put mode for replacing `current`: `Create` when there
/// is nothing, `Update` of its version otherwise.
fn mode_for(current: &Current) -> PutMode {
    match current.bytes {
        None => PutMode::Create,
        Some(_) => PutMode::Update(current.version.clone()),
    }
}

/// `update`: get, `f`, conditional put; on a lost race, again on the fresh
/// content after a jittered pause, at most `max_tries` times.
pub(crate) async fn update<F, E>(
    options: &ObjectOptions,
    store: &dyn ObjectStore,
    location: &ObjectPath,
    mut f: F,
) -> Result<PutResult, E>
where
    F: FnMut(Option<Vec<u8>>) -> Result<Vec<u8>, E>,
    E: From<Error>,
{
    let mut write = Conditional::new();
    let mut pause = FIRST_BACKOFF;
    let mut last: Option<Error> = None;
    for try_number in 1..=options.max_tries {
        if try_number > 1 {
            let nap = pause.mul_f64(0.5 + 0.5 * jitter());
            tokio::time::sleep(nap).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
        let mut now = current(store, location, false, Some(options.conditional_limit)).await?;
        // An earlier try whose answer was lost may have landed: then `f`
        // has been applied, and must not be again.
        if let Some(put) = write.landed(location, &now)? {
            return Ok(put);
        }
        let mode = mode_for(&now);
        let new = f(now.bytes.take())?;
        if new.len() > options.conditional_limit {
            return Err(too_large(
                Op::Put,
                location,
                new.len() as u64,
                options.conditional_limit,
            )
            .into());
        }
        let payload = PutPayload::from(new);
        match write.put(store, location, &payload, mode, &now).await {
            Ok(Outcome::Put(put)) => return Ok(put),
            Ok(Outcome::Lost(e)) => last = Some(store_error(Op::Put, location, e)),
            Err(e) if e.kind() == io::ErrorKind::Other && !write.undecidable => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    let last = last.map_or_else(String::new, |e| format!(" (last: {})", e.io_error()));
    let why = format!(
        "gave up after {} tries: the object kept changing or the store kept failing{last}",
        options.max_tries,
    );
    Err(Error::new(
        Op::Put,
        location_path(location),
        io::Error::new(io::ErrorKind::ResourceBusy, why),
    )
    .into())
}

/// The error of a conditional write past its limit (`Op::Put`), or of an
/// object to update past it (`Op::Read`).
pub(crate) fn too_large(op: Op, location: &ObjectPath, len: u64, limit: usize) -> Error {
    let what = match op {
        Op::Read => "the object to update",
        _ => "a conditional write",
    };
    Error::new(
        op,
        location_path(location),
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "{what} is one PUT held in memory: {len} bytes is past the limit of {limit} \
                 bytes (ObjectOptions::conditional_limit)"
            ),
        ),
    )
}
