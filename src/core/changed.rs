//! The synchronous half of [`write_if_changed`](crate::write_if_changed).

use std::path::PathBuf;

use crate::{Error, OpenOptions};

/// Placeholder until the comparison lands: always writes.
pub(crate) fn write_if_changed(
    opts: &OpenOptions,
    target: PathBuf,
    contents: &[u8],
) -> Result<bool, Error> {
    super::write(opts, target, contents)?;
    Ok(true)
}
