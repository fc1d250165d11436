//! Integrations with other business systems. Implement [`Integration`] and export it with
//! [`export_integration!`](crate::export_integration).

pub use crate::__private::bindings::postdog::plugin::integration_types::{
    IntegrationError, IntegrationOutcome, KernelEvent, SyncPage,
};

use crate::message::{Effect, HttpRequest};

/// An integration.
pub trait Integration {
    /// Handles a webhook from the other system.
    fn handle_webhook(request: HttpRequest) -> Result<IntegrationOutcome, IntegrationError>;

    /// Reacts to a kernel event. Default: no effects.
    fn on_event(_event: KernelEvent) -> Result<Vec<Effect>, IntegrationError> {
        Ok(Vec::new())
    }

    /// Synchronizes one page. Default: nothing to synchronize.
    fn sync(_cursor: Option<String>) -> Result<SyncPage, IntegrationError> {
        Ok(SyncPage {
            effects: Vec::new(),
            next_cursor: None,
        })
    }
}
