//! The HTTP API. One module per resource, each with its own `router()`, merged in
//! `router`; handlers stay short and go through the storage layer. Errors are RFC 9457
//! `application/problem+json` bodies with a stable `type` per error (`problem.rs`).

mod health;
pub mod problem;

use axum::Router;

use crate::runtime::Runtime;
use crate::storage::Storage;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub storage: Storage,
    /// The plugin runtime.
    pub runtime: Runtime,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .fallback(problem::not_found)
        .with_state(state)
}
