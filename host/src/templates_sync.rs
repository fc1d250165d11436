//! Template review states by polling: reads the provider's template list and applies
//! each state to the stored templates (webhooks usually arrive first; polling catches
//! the ones that never do). `templates.poll` jobs repeat every five minutes while an
//! install has templates in review.

use serde_json::json;

use crate::jobs::{JobFailure, Jobs};
use crate::marketplace::{Marketplace, MarketplaceError};
use crate::runtime::abi::channel_types::ChannelError;
use crate::storage::{NewJob, StorageError, TenantDb, now_ms};
use crate::webhooks::Webhooks;

/// Why a sync failed.
#[derive(Debug)]
pub enum SyncError {
    /// The install cannot be called.
    Marketplace(MarketplaceError),
    /// Storage failed.
    Storage(StorageError),
    /// The provider refused.
    Provider(ChannelError),
}

impl From<StorageError> for SyncError {
    fn from(error: StorageError) -> Self {
        SyncError::Storage(error)
    }
}

/// Applies the provider's template states to an install's templates; how many changed.
pub async fn sync(
    marketplace: &Marketplace,
    webhooks: &Webhooks,
    db: &TenantDb,
    install_id: &str,
) -> Result<usize, SyncError> {
    let handle = marketplace
        .channel(db, install_id)
        .await
        .map_err(SyncError::Marketplace)?;
    let listed = handle
        .list_templates()
        .await
        .map_err(SyncError::Marketplace)?
        .map_err(SyncError::Provider)?;
    let mut changed = 0;
    for info in listed {
        if let Some(template) = db
            .set_template_status(install_id, &info.name, &info.language, &info.status, None)
            .await?
        {
            changed += 1;
            webhooks
                .emit(
                    db,
                    "template.status",
                    json!({
                        "template_id": template.id,
                        "name": template.name,
                        "language": template.language,
                        "status": template.status,
                        "reason": template.reason,
                    }),
                )
                .await?;
        }
    }
    Ok(changed)
}

/// Registers the `templates.poll` job.
pub fn register(jobs: &Jobs, marketplace: Marketplace, webhooks: Webhooks) {
    let queue = jobs.clone();
    jobs.register("templates.poll", move |job| {
        let (marketplace, webhooks, queue) = (marketplace.clone(), webhooks.clone(), queue.clone());
        async move {
            let tenant = job
                .tenant_id
                .clone()
                .ok_or_else(|| JobFailure::permanent("no tenant"))?;
            let install_id = job.payload["install_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let db = queue.storage().tenant(&crate::ids::TenantId::new(&tenant));
            match sync(&marketplace, &webhooks, &db, &install_id).await {
                Ok(_) => {}
                Err(SyncError::Marketplace(MarketplaceError::NotFound(_))) => return Ok(()),
                Err(SyncError::Storage(error)) => return Err(error.into()),
                Err(other) => tracing::warn!(?other, install_id, "template poll failed"),
            }
            if !db
                .templates(Some(&install_id), Some("PENDING"))
                .await?
                .is_empty()
            {
                let mut next = NewJob::new(
                    "templates",
                    "templates.poll",
                    Some(db.tenant_id()),
                    json!({ "install_id": install_id }),
                );
                next.run_at = now_ms() + 5 * 60_000;
                next.idempotency_key = Some(format!(
                    "templates.poll:{install_id}:{}",
                    next.run_at / (5 * 60_000)
                ));
                queue.enqueue(&next).await?;
            }
            Ok(())
        }
    });
}
