//! Private files the host writes: key files it creates for itself on first start (the
//! secrets key, the operator's publisher key) and the publisher keys `postdog plugin
//! keygen` writes. A file is written whole to a temporary file (mode 0600) in the same
//! directory and then moved into place, so no reader ever sees a partial key; when
//! several processes create the same file at once, the first wins and the others read
//! its contents.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` with mode 0600, atomically. Without `overwrite`, an
/// existing file is left alone and the error is `AlreadyExists`.
pub(crate) fn write_private(path: &Path, contents: &[u8], overwrite: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    // `tempfile` creates its files with mode 0600 on Unix.
    let mut file = tempfile::Builder::new()
        .prefix(".postdog-key-")
        .tempfile_in(&dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    let persisted = if overwrite {
        file.persist(path)
    } else {
        file.persist_noclobber(path)
    };
    persisted.map(drop).map_err(|error| error.error)
}

/// The file's text, creating it with `make()` if it does not exist.
pub(crate) fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> String,
) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let text = make();
            match write_private(path, text.as_bytes(), false) {
                Ok(()) => Ok(text),
                // Another process created it first: use theirs.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(path)
                }
                Err(error) => Err(error),
            }
        }
        other => other,
    }
}
