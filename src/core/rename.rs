//! The synchronous half of [`rename`](crate::rename).

use std::path::Path;

use crate::{Error, OpenOptions};

/// Placeholder.
pub(crate) fn rename(_opts: &OpenOptions, from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(|e| Error::new(crate::Op::Rename, to, e).moving(from))
}
