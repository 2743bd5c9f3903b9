//! The requests behind the shell: the location check, the conditional put
//! that can tell its own lost answer from a lost race, and `update`'s loop.
//!
//! A conditional put whose answer is lost (a timeout, a cut connection),
//! or which the client retries after its first try landed, cannot tell
//! from the answer alone whether it published: the retry sees its own
//! write as a conflict. So every conditional put carries a random token in
//! the object's metadata, beside the tokens of the last few writes
//! ([`RECENT`] of them); after an unclear answer the object is read back,
//! and a token of this call found there means the put landed. Comparing
//! bytes would not do: two incrementers that read 41 both write 42.

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

/// The metadata key of the write tokens (`x-amz-meta-tokio-atomic-write`
/// on S3).
pub(crate) const TOKEN_KEY: &str = "tokio-atomic-write";

/// How many tokens of past writes an object carries.
const RECENT: usize = 8;

/// The first pause after a lost race; it doubles up to [`MAX_BACKOFF`],
/// each pause jittered between half and all of it.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

pub(crate) fn location_path(location: &ObjectPath) -> PathBuf {
    PathBuf::from(location.as_ref())
}

/// Rejects a location no request should be sent for: an empty one
/// addresses the bucket itself on S3 (a PUT there answers 409, a GET lists
/// the bucket).
pub(crate) fn check_location(location: &ObjectPath) -> Result<(), Error> {
    let raw = location.as_ref();
    let why = if raw.is_empty() {
        Some("an empty location names no object (on S3, the bucket itself)".to_string())
    } else {
        ObjectPath::parse(raw).err().map(|e| e.to_string())
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

/// A fraction in [0, 1) for jitter.
fn jitter() -> f64 {
    (RandomState::new().hash_one(random_token()) >> 11) as f64 / (1u64 << 53) as f64
}

/// The tokens an object carries, oldest first.
fn tokens_of(attributes: &Attributes) -> Vec<String> {
    attributes
        .get(&Attribute::Metadata(TOKEN_KEY.into()))
        .map(|v| {
            v.as_ref()
                .split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// What is at a location, as a conditional write needs it.
pub(crate) struct Current {
    pub(crate) bytes: Option<Vec<u8>>,
    pub(crate) version: UpdateVersion,
    pub(crate) tokens: Vec<String>,
}

/// Reads the object (or only its head) with its version and tokens.
pub(crate) async fn current(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    head: bool,
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
            let tokens = tokens_of(&got.attributes);
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
                tokens,
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Current {
            bytes: None,
            version: UpdateVersion {
                e_tag: None,
                version: None,
            },
            tokens: Vec::new(),
        }),
        Err(e) => Err(store_error(Op::Read, location, e)),
    }
}

/// One conditional write: its token, and the tokens it carries on.
pub(crate) struct Conditional {
    token: String,
    /// Whether the store keeps metadata; `LocalFileSystem` rejects it, and
    /// there an answer is never lost, so the put goes without.
    with_token: bool,
}

/// How a conditional put ended.
pub(crate) enum Outcome {
    /// Published (possibly by an earlier try whose answer was lost).
    Put(PutResult),
    /// Another writer got there first: the object exists (`Create`) or has
    /// another version (`Update`). The error says which.
    Lost(object_store::Error),
}

impl Conditional {
    pub(crate) fn new() -> Self {
        Conditional {
            token: random_token(),
            with_token: true,
        }
    }

    /// Whether `tokens` include this write's: it landed.
    fn landed(&self, tokens: &[String]) -> bool {
        self.with_token && tokens.contains(&self.token)
    }

    fn attributes(&self, previous: &[String]) -> Attributes {
        let mut attributes = Attributes::new();
        if self.with_token {
            let keep = previous.len().saturating_sub(RECENT - 1);
            let mut tokens: Vec<&str> = previous[keep..].iter().map(String::as_str).collect();
            tokens.push(&self.token);
            attributes.insert(
                Attribute::Metadata(TOKEN_KEY.into()),
                AttributeValue::from(tokens.join(" ")),
            );
        }
        attributes
    }

    /// Puts `bytes` with `mode` (`Create` or `Update`), carrying on the
    /// `previous` tokens. A conflict, or an answer that may have been lost,
    /// is checked against what is at the location before it is believed.
    pub(crate) async fn put(
        &mut self,
        store: &dyn ObjectStore,
        location: &ObjectPath,
        bytes: &PutPayload,
        mode: PutMode,
        previous: &[String],
    ) -> Result<Outcome, Error> {
        let result = loop {
            let options = PutOptions {
                mode: mode.clone(),
                attributes: self.attributes(previous),
                ..PutOptions::default()
            };
            match store.put_opts(location, bytes.clone(), options).await {
                Err(object_store::Error::NotImplemented { operation, .. })
                    if self.with_token && operation.contains("attributes") =>
                {
                    self.with_token = false;
                }
                other => break other,
            }
        };
        match result {
            Ok(put) => Ok(Outcome::Put(put)),
            Err(
                e @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }),
            ) => {
                // The client may have retried a try that landed; look.
                match self.check(store, location).await? {
                    Some(put) => Ok(Outcome::Put(put)),
                    None => Ok(Outcome::Lost(e)),
                }
            }
            Err(e) if unclear(&e) => match self.check(store, location).await {
                Ok(Some(put)) => Ok(Outcome::Put(put)),
                _ => Err(store_error(Op::Put, location, e)),
            },
            Err(e) => Err(store_error(Op::Put, location, e)),
        }
    }

    /// What an earlier try of this write left: its result if it landed.
    pub(crate) async fn check(
        &self,
        store: &dyn ObjectStore,
        location: &ObjectPath,
    ) -> Result<Option<PutResult>, Error> {
        if !self.with_token {
            return Ok(None);
        }
        let now = current(store, location, true).await?;
        Ok(self.landed(&now.tokens).then(|| landed_result(now.version)))
    }
}

/// The result of a put found landed, from the object's version.
fn landed_result(version: UpdateVersion) -> PutResult {
    PutResult {
        e_tag: version.e_tag,
        version: version.version,
        extensions: Default::default(),
    }
}

/// Whether a failed request may nevertheless have landed: anything but a
/// definite answer from the store.
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
    let mut last: Option<String> = None;
    for try_number in 1..=options.max_tries {
        if try_number > 1 {
            let nap = pause.mul_f64(0.5 + 0.5 * jitter());
            tokio::time::sleep(nap).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
        let now = current(store, location, false).await?;
        // An earlier try whose answer was lost may have landed: then `f`
        // has been applied, and must not be again.
        if try_number > 1 && write.landed(&now.tokens) {
            return Ok(landed_result(now.version));
        }
        let mode = mode_for(&now);
        let new = f(now.bytes)?;
        if new.len() > options.conditional_limit {
            return Err(too_large(location, new.len(), options.conditional_limit).into());
        }
        let payload = PutPayload::from(new);
        match write
            .put(store, location, &payload, mode, &now.tokens)
            .await
        {
            Ok(Outcome::Put(put)) => return Ok(put),
            Ok(Outcome::Lost(e)) => last = Some(e.to_string()),
            Err(e) if e.kind() == io::ErrorKind::Other => last = Some(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    let why = format!(
        "gave up after {} tries: the object kept changing or the store kept failing (last: {})",
        options.max_tries,
        last.unwrap_or_default()
    );
    Err(Error::new(
        Op::Put,
        location_path(location),
        io::Error::new(io::ErrorKind::ResourceBusy, why),
    )
    .into())
}

/// The error of a conditional write past its limit.
pub(crate) fn too_large(location: &ObjectPath, len: usize, limit: usize) -> Error {
    Error::new(
        Op::Put,
        location_path(location),
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "a conditional write is one PUT held in memory: {len} bytes is past the limit of \
                 {limit} bytes (ObjectOptions::conditional_limit)"
            ),
        ),
    )
}
