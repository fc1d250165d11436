//! Provisioning tenants: the rules shared by `postdog tenant create` and the operator API
//! (a valid plan, a parent that exists and is a Business reseller, a first admin key).

use crate::ids::TenantId;
use crate::plans::Plan;
use crate::storage::{NewApiKey, Role, Storage, StorageError, Tenant};

/// Why a tenant could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The name is empty or too long.
    #[error("the tenant name must be 1 to 200 characters")]
    InvalidName,
    /// The parent does not exist.
    #[error("parent tenant `{0}` does not exist")]
    UnknownParent(TenantId),
    /// The parent is not a reseller.
    #[error(
        "parent tenant `{0}` is not on the business plan; only business tenants can have sub-tenants"
    )]
    ParentNotReseller(TenantId),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Creates a tenant (a sub-tenant when `parent` is given) with a first `admin` key.
pub async fn provision_tenant(
    storage: &Storage,
    name: &str,
    plan: Plan,
    parent: Option<&TenantId>,
) -> Result<(Tenant, NewApiKey), ProvisionError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ProvisionError::InvalidName);
    }
    let tenant = match parent {
        Some(parent_id) => {
            let parent = storage
                .get_tenant(parent_id)
                .await?
                .ok_or_else(|| ProvisionError::UnknownParent(parent_id.clone()))?;
            if parent.plan != Plan::Business.as_str() {
                return Err(ProvisionError::ParentNotReseller(parent_id.clone()));
            }
            storage
                .create_sub_tenant(parent_id, name, plan.as_str())
                .await?
        }
        None => storage.create_tenant(name, plan.as_str()).await?,
    };
    let key = storage
        .tenant(&tenant.id)
        .create_api_key("initial admin key", Role::Admin)
        .await?;
    Ok((tenant, key))
}
