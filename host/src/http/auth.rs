//! Authentication, tenant scoping and rate limiting of `/v1/…`: one middleware that turns
//! `Authorization: Bearer <key>` into a `Caller` (the key and its tenant) for handlers,
//! refuses unknown or revoked keys (401) and suspended tenants (403), applies the plan's
//! rate limit (429 with `Retry-After`) and adds `RateLimit-*` headers to every answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::ApiError;
use crate::plans::Plan;
use crate::storage::{ApiKey, Role, Tenant, TenantDb};

/// Who is calling: the API key and its tenant. Handlers reach data only through
/// `Caller::db`, scoped to the caller's tenant.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key used.
    pub key: Arc<ApiKey>,
    /// Its tenant (the sub-tenant acted on, with `PostDog-Act-As`).
    pub tenant: Arc<Tenant>,
    db: TenantDb,
}

impl Caller {
    /// The caller's tenant-scoped database handle.
    pub fn db(&self) -> &TenantDb {
        &self.db
    }

    /// Refuses the call unless the key has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.key.role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient-role",
                "Insufficient role",
                format!(
                    "this API key has the `{}` role; this call needs {}",
                    self.key.role.as_str(),
                    roles
                        .iter()
                        .map(|role| format!("`{}`", role.as_str()))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ))
        }
    }
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
}

/// Key use is recorded at most this often per key, to keep reads free of writes.
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// The `/v1` middleware.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let act_as = request.headers().get(ACT_AS_HEADER).cloned();
    let caller = match identify(&state, authorization, act_as).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let plan = Plan::of(&caller.tenant.plan);
    let decision = state.rate_limiter.check(
        &caller.tenant.id,
        caller
            .tenant
            .requests_per_minute
            .unwrap_or(plan.requests_per_minute()),
    );
    let mut response = if decision.allowed {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let audit = (!method.is_safe()).then(|| (caller.db().clone(), caller.key.id.clone()));
        request.extensions_mut().insert(caller);
        let response = next.run(request).await;
        // Every state-changing call is audited, whatever its outcome, before answering.
        if let Some((db, key_id)) = audit
            && let Err(error) = db
                .record_audit(
                    Some(&key_id),
                    method.as_str(),
                    &path,
                    response.status().as_u16(),
                )
                .await
        {
            tracing::error!(%error, "could not write the audit log");
        }
        response
    } else {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!(
                "the {} plan allows {} requests per minute; retry in {} s or upgrade the plan",
                plan.as_str(),
                decision.limit,
                decision.retry_after_seconds
            ),
        )
        .into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_seconds),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(decision.reset_seconds));
    response
}

/// A reseller's key acts on one of its sub-tenants by naming it in this header.
pub const ACT_AS_HEADER: &str = "postdog-act-as";

async fn identify(
    state: &AppState,
    authorization: Option<HeaderValue>,
    act_as: Option<HeaderValue>,
) -> Result<Caller, ApiError> {
    let Some(value) = authorization else {
        return Err(unauthorized(
            "send your API key as `Authorization: Bearer <key>`",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
    let key = state
        .storage
        .authenticate_key(secret)
        .await?
        .ok_or_else(|| unauthorized("this API key is unknown or has been revoked"))?;
    let tenant = state
        .storage
        .authenticate_tenant(&key.tenant_id)
        .await?
        .ok_or_else(|| unauthorized("this API key's tenant no longer exists"))?;
    if tenant.status != "active" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant-suspended",
            "Tenant suspended",
            "this tenant is suspended; contact the operator",
        ));
    }
    let now = crate::storage::now_ms();
    if key
        .last_used_at
        .is_none_or(|last| now - last >= TOUCH_INTERVAL_MS)
        && let Err(error) = state.storage.record_key_use(secret, &key.id).await
    {
        tracing::warn!(%error, "could not record an API key's use");
    }
    let tenant = match act_as {
        None => tenant,
        Some(value) => act_on_sub_tenant(state, &tenant, &value).await?,
    };
    Ok(Caller {
        db: state.storage.tenant(&tenant.id),
        key,
        tenant,
    })
}

/// The sub-tenant a reseller names in `PostDog-Act-As`, if it is really one of its own.
async fn act_on_sub_tenant(
    state: &AppState,
    reseller: &Tenant,
    value: &HeaderValue,
) -> Result<Arc<Tenant>, ApiError> {
    let refuse = |detail: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "not-your-sub-tenant",
            "Not your sub-tenant",
            detail,
        )
    };
    if reseller.plan != Plan::Business.as_str() {
        return Err(refuse("only business tenants have sub-tenants to act on"));
    }
    let id = value
        .to_str()
        .map_err(|_| refuse("the PostDog-Act-As header must be a tenant id"))?;
    let target = state
        .storage
        .authenticate_tenant(&crate::ids::TenantId::new(id.trim()))
        .await?;
    match target {
        Some(target) if target.parent_id.as_ref() == Some(&reseller.id) => {
            if target.status != "active" {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "tenant-suspended",
                    "Tenant suspended",
                    "this sub-tenant is suspended",
                ));
            }
            Ok(target)
        }
        // Unknown and foreign tenants look the same, so ids cannot be probed.
        _ => Err(refuse("no sub-tenant with this id belongs to your tenant")),
    }
}
