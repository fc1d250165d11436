//! The HTTP API. One module per resource, each with its own `router()`, merged in
//! `router`; handlers stay short and go through the storage layer. Errors are RFC 9457
//! `application/problem+json` bodies with a stable `type` per error (`problem.rs`).

mod admin;
mod api_keys;
pub mod auth;
mod campaigns;
mod contacts;
mod flows;
mod health;
mod imports;
pub mod json;
mod marketplace;
mod messaging;
mod openapi;
pub mod problem;
pub mod rate_limit;
mod segments;
mod sub_tenants;
mod teams;
mod tenant;

use std::sync::Arc;

use axum::Router;
use axum::middleware;

use crate::runtime::Runtime;
use crate::storage::Storage;

/// What every handler can reach: one shared allocation. Axum clones the state for every
/// request; cloning the parts themselves cost about twenty reference counts and two
/// string copies per request (~1.5% of the `inbound` benchmark's server CPU).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// Shares `parts` with every handler.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    /// The database.
    pub storage: Storage,
    /// The plugin runtime.
    pub runtime: Runtime,
    /// Per-tenant request limits.
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    /// The operator API's token; `None` turns the operator API off.
    pub operator_token: Option<String>,
    /// Background contact imports.
    pub importer: crate::imports::Importer,
    /// Plugin installs and the registry behind them.
    pub marketplace: crate::marketplace::Marketplace,
    /// The durable job queue.
    pub jobs: crate::jobs::Jobs,
    /// Channels: inbound webhooks, sending, the inbox.
    pub messaging: crate::messaging::Messaging,
    /// Outbound webhooks to tenants.
    pub webhooks: crate::webhooks::Webhooks,
    /// Automation flows.
    pub flows: crate::flows::Flows,
    /// Broadcast campaigns.
    pub campaigns: crate::campaigns::Campaigns,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    // Every tenant API route sits behind authentication and rate limiting.
    let tenant_api = Router::new()
        .merge(api_keys::router())
        .merge(campaigns::router())
        .merge(contacts::router())
        .merge(imports::router())
        .merge(marketplace::router())
        .merge(messaging::router())
        .merge(flows::router())
        .merge(segments::router())
        .merge(sub_tenants::router())
        .merge(teams::router())
        .merge(tenant::router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .merge(health::router())
        .merge(messaging::hooks_router())
        .merge(flows::hooks_router())
        .merge(tenant_api)
        .merge(admin::router(state.clone()))
        .merge(openapi::router())
        .layer(middleware::from_fn(openapi::check_documented))
        .fallback(problem::not_found)
        .with_state(state)
}
