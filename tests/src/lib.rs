//! Support for PostDog's end-to-end tests: the plugins built from `plugins/` by this
//! crate's build script, and loopback fakes of third-party services.

use std::path::PathBuf;

/// The directory holding the plugins built for the tests.
pub fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("POSTDOG_PLUGIN_DIR"))
}

/// The path of a built plugin, by crate name with underscores (`hello_action`).
pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("{name}.wasm"))
}

/// The bytes of a built plugin.
///
/// # Panics
/// When the plugin was not built (the build script builds every member of `plugins/`).
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("plugin {} is missing: {error}", path.display()))
}
