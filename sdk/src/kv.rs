//! The install's private key-value store (needs the `kv` capability). Keys up to 256
//! bytes, values up to 64 KiB, 1 MiB and 1000 keys per install by default.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::postdog::plugin::kv as host;

pub use host::KvError;

/// The value under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    host::get(key)
}

/// Stores `value` under `key`.
pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
    host::set(key, value)
}

/// Deletes `key`; whether it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    host::delete(key)
}

/// Keys starting with `prefix`, in byte order (at most 1000).
pub fn list_keys(prefix: &str) -> Result<Vec<String>, KvError> {
    host::list_keys(prefix)
}

/// The value under `key` decoded from JSON; a stored value that does not decode is
/// reported as `unavailable` with the reason.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, KvError> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            KvError::Unavailable(format!(
                "the value of `{key}` is not the expected JSON: {error}"
            ))
        }),
    }
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), KvError> {
    let bytes = serde_json::to_vec(value).map_err(|error| {
        KvError::Unavailable(format!("cannot encode the value of `{key}`: {error}"))
    })?;
    set(key, &bytes)
}
