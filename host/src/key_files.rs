//! Key files the host creates for itself on first start (the secrets key, the operator's
//! publisher key): read the file, or create it once with mode 0600. When several
//! processes start at once, the first to create the file wins and the others read it.

use std::io::Write;
use std::path::Path;

/// The file's text, creating it with `make()` if it does not exist.
pub(crate) fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> String,
) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    let text = make();
                    file.write_all(text.as_bytes())?;
                    file.sync_all()?;
                    Ok(text)
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(path)
                }
                Err(error) => Err(error),
            }
        }
        other => other,
    }
}
