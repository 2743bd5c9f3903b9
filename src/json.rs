//! Feature `serde`: a value as a JSON file, written atomically and durably
//! (a web server's state file), and read back.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{blocking, core, Error, Op, OpenOptions};

/// Replaces the file at `path` with `value` as compact JSON, atomically and
/// durably: [`write`](crate::write) of `serde_json::to_vec(value)`.
///
/// The value is serialised on the caller's task, before anything on disk
/// changes; the write is one trip to the blocking pool.
///
/// # Errors
///
/// [`Op::Serialize`] when the value cannot be represented (a map whose
/// keys are not strings, a failing `Serialize` impl): nothing on disk
/// changes. Then as [`write`](crate::write).
///
/// # Cancel safety
///
/// As [`write`](crate::write).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("state.json");
/// use std::collections::BTreeMap;
///
/// let mut state = BTreeMap::new();
/// state.insert("visits", 41);
/// tokio_atomic_write::write_json(&path, &state).await?;
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"visits":41}"#);
///
/// let back: BTreeMap<String, u64> = tokio_atomic_write::read_json(&path).await?;
/// assert_eq!(back["visits"], 41);
/// # Ok(())
/// # }
/// ```
pub async fn write_json<T: Serialize + ?Sized>(
    path: impl AsRef<Path>,
    value: &T,
) -> Result<(), Error> {
    OpenOptions::new().write_json(path, value).await
}

/// [`write_json`], indented for people to read (`serde_json`'s pretty
/// printer, two spaces), with a final newline.
///
/// # Errors
///
/// As [`write_json`].
///
/// # Cancel safety
///
/// As [`write`](crate::write).
pub async fn write_json_pretty<T: Serialize + ?Sized>(
    path: impl AsRef<Path>,
    value: &T,
) -> Result<(), Error> {
    OpenOptions::new().write_json_pretty(path, value).await
}

/// Reads the JSON file at `path` into a `T`. The read runs on the
/// blocking pool, the parsing on the caller's task.
///
/// # Errors
///
/// [`Op::Read`] when the file cannot be read (when there is none, the OS
/// error: of kind [`NotFound`](std::io::ErrorKind::NotFound), `raw_os_error`
/// `ENOENT`; a directory
/// or a FIFO fails without blocking); [`Op::Deserialize`] when its content
/// is not a `T` in JSON, of kind [`InvalidData`](std::io::ErrorKind::InvalidData)
/// (or [`UnexpectedEof`](std::io::ErrorKind::UnexpectedEof) for a truncated
/// document), the parser's message (line and column) in the error's.
///
/// # Cancel safety
///
/// Dropping the future changes nothing; a read already started finishes
/// on the pool and is thrown away.
pub async fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, Error> {
    let target = path.as_ref().to_path_buf();
    let to_read = target.clone();
    let bytes = blocking::run(move || core::update::read(&to_read))
        .await
        .map_err(|e| Error::new(Op::Read, &target, e))??
        .ok_or_else(|| Error::new(Op::Read, &target, crate::sys::not_found()))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::new(Op::Deserialize, &target, e.into()))
}

/// Applies `f` to the value in the JSON file at `path` and writes it back:
/// the typed read-modify-write of a state file, with no change lost to a
/// concurrent update (an [`update`](crate::update) underneath: the same
/// in-process turn and lock file). Returns what `f` returns.
///
/// A missing file starts from `T::default()`. The value is written back
/// as compact JSON, as [`write_json`] writes it, atomically and durably.
/// `f` runs on the caller's task, as `update`'s does, and must not itself
/// update the same path.
///
/// # Errors
///
/// [`Op::Deserialize`] when the file holds no `T` in JSON: the file is left
/// as it is and `f` does not run. [`Op::Serialize`] when the new value
/// cannot be written as JSON: nothing changes. Otherwise as
/// [`update`](crate::update).
///
/// # Cancel safety
///
/// As [`update`](crate::update): dropped before `f` runs, nothing changes;
/// after, the write runs to its end.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("state.json");
/// use std::collections::BTreeMap;
///
/// // No file yet: starts from an empty map.
/// let visits = tokio_atomic_write::update_json(&path, |hits: &mut BTreeMap<String, u64>| {
///     let n = hits.entry("/".to_string()).or_default();
///     *n += 1;
///     *n
/// })
/// .await?;
/// assert_eq!(visits, 1);
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"/":1}"#);
/// # Ok(())
/// # }
/// ```
pub async fn update_json<T, R>(
    path: impl AsRef<Path>,
    f: impl FnOnce(&mut T) -> R,
) -> Result<R, Error>
where
    T: Serialize + DeserializeOwned + Default,
{
    OpenOptions::new().update_json(path, f).await
}

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl OpenOptions {
    /// [`update_json`](crate::update_json) with these options: the lock
    /// file, durability, mode and the rest apply as to
    /// [`update`](Self::update).
    ///
    /// # Errors
    ///
    /// As [`update_json`](crate::update_json).
    ///
    /// # Cancel safety
    ///
    /// As [`update_json`](crate::update_json).
    pub async fn update_json<T, R>(
        &self,
        path: impl AsRef<Path>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, Error>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let path = path.as_ref();
        let mut out = None;
        self.update(path, |old| {
            let mut value = match old {
                None => T::default(),
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| Error::new(Op::Deserialize, path, e.into()))?,
            };
            out = Some(f(&mut value));
            serde_json::to_vec(&value).map_err(|e| serialize_error(path, e))
        })
        .await?;
        Ok(out.expect("f ran: the update succeeded"))
    }

    /// [`write_json`](crate::write_json) with these options.
    ///
    /// # Errors
    ///
    /// As [`write_json`](crate::write_json).
    ///
    /// # Cancel safety
    ///
    /// As [`write`](Self::write).
    pub async fn write_json<T: Serialize + ?Sized>(
        &self,
        path: impl AsRef<Path>,
        value: &T,
    ) -> Result<(), Error> {
        let path = path.as_ref();
        let bytes = serde_json::to_vec(value).map_err(|e| serialize_error(path, e))?;
        self.write_vec(path, bytes).await
    }

    /// [`write_json_pretty`](crate::write_json_pretty) with these options.
    ///
    /// # Errors
    ///
    /// As [`write_json`](crate::write_json).
    ///
    /// # Cancel safety
    ///
    /// As [`write`](Self::write).
    pub async fn write_json_pretty<T: Serialize + ?Sized>(
        &self,
        path: impl AsRef<Path>,
        value: &T,
    ) -> Result<(), Error> {
        let path = path.as_ref();
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| serialize_error(path, e))?;
        bytes.push(b'\n');
        self.write_vec(path, bytes).await
    }
}

fn serialize_error(path: &Path, e: serde_json::Error) -> Error {
    Error::new(Op::Serialize, path, e.into())
}
