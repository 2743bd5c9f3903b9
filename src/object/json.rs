//! Features `serde` and `object_store`: a value as a JSON object, written
//! whole, and read back.

use std::io;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::put::{self, location_path};
use crate::{Error, Op};

/// Replaces the object at `location` with `value` as compact JSON, whole:
/// [`write`](super::write) of `serde_json::to_vec(value)`.
///
/// # Errors
///
/// [`Op::Serialize`] when the value cannot be represented: nothing is
/// sent. Then as [`write`](super::write).
///
/// # Cancel safety
///
/// As [`write`](super::write).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_atomic_write::Error> {
/// use std::collections::BTreeMap;
/// use std::sync::Arc;
/// use object_store::{memory::InMemory, ObjectStore};
/// use tokio_atomic_write::object;
///
/// let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
/// let mut state = BTreeMap::new();
/// state.insert("visits", 41);
/// object::write_json(store.clone(), "state.json", &state).await?;
/// let back: BTreeMap<String, u64> = object::read_json(store, "state.json").await?;
/// assert_eq!(back["visits"], 41);
/// # Ok(())
/// # }
/// ```
pub async fn write_json<T: Serialize + ?Sized>(
    store: Arc<dyn ObjectStore>,
    location: impl Into<ObjectPath>,
    value: &T,
) -> Result<PutResult, Error> {
    let location = location.into();
    put::check_location(&location)?;
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::new(Op::Serialize, location_path(&location), e.into()))?;
    super::write(store, location, bytes).await
}

/// Reads the JSON object at `location` into a `T`.
///
/// # Errors
///
/// [`Op::Open`] for a bad location; [`Op::Read`] when the object cannot be
/// read (of kind [`NotFound`](io::ErrorKind::NotFound) when there is
/// none); [`Op::Deserialize`] when it is not a `T` in JSON, of kind
/// [`InvalidData`](io::ErrorKind::InvalidData) (or
/// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) for a truncated
/// document).
///
/// # Cancel safety
///
/// Reads only: dropping the future changes nothing.
pub async fn read_json<T: DeserializeOwned>(
    store: Arc<dyn ObjectStore>,
    location: impl Into<ObjectPath>,
) -> Result<T, Error> {
    let location = location.into();
    put::check_location(&location)?;
    let bytes = put::current(store.as_ref(), &location, false, None)
        .await?
        .bytes
        .ok_or_else(|| {
            Error::new(
                Op::Read,
                location_path(&location),
                io::Error::new(io::ErrorKind::NotFound, "no such object"),
            )
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(Op::Deserialize, location_path(&location), e.into()))
}
