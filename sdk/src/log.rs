//! Logging to the host's log, with the tenant, install and plugin attached.

use crate::__private::bindings::postdog::plugin::log as host;

pub use host::Level;

/// Writes a line at `level`.
pub fn write(level: Level, message: &str) {
    host::log(level, message);
}

/// Debugging detail.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Normal operation.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Something unexpected that the plugin handled.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// A failure.
pub fn error(message: &str) {
    write(Level::Error, message);
}
