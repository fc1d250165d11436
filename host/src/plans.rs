//! Plans and what they allow. A tenant's plan is read on every request, so a plan change
//! takes effect immediately.

use serde::{Deserialize, Serialize};

/// A subscription plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// Small businesses.
    Starter,
    /// Growing teams.
    Pro,
    /// Agencies and resellers (may have sub-tenants).
    Business,
}

impl Plan {
    /// The plan of `db`'s tenant, read now (Starter if the tenant is gone).
    ///
    /// # Errors
    /// Storage.
    pub async fn of_tenant(
        db: &crate::storage::TenantDb,
    ) -> Result<Self, crate::storage::StorageError> {
        Ok(db
            .storage()
            .get_tenant(db.tenant_id())
            .await?
            .map_or(Plan::Starter, |tenant| Plan::of(&tenant.plan)))
    }

    /// Every plan.
    pub const ALL: [Plan; 3] = [Plan::Starter, Plan::Pro, Plan::Business];

    /// The plan's name (`starter`, `pro`, `business`).
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Starter => "starter",
            Plan::Pro => "pro",
            Plan::Business => "business",
        }
    }

    /// Parses a plan name.
    pub fn parse(name: &str) -> Option<Plan> {
        Plan::ALL.into_iter().find(|plan| plan.as_str() == name)
    }

    /// A stored tenant's plan: an unknown name counts as Starter.
    #[must_use]
    pub fn of(name: &str) -> Plan {
        Self::parse(name).unwrap_or(Plan::Starter)
    }

    /// API requests per minute, across all of the tenant's keys.
    pub fn requests_per_minute(self) -> u32 {
        match self {
            Plan::Starter => 100,
            Plan::Pro => 500,
            Plan::Business => 2_000,
        }
    }

    /// Most contacts; `None` is unlimited.
    pub fn contact_limit(self) -> Option<u64> {
        match self {
            Plan::Starter => Some(1_000),
            Plan::Pro => Some(10_000),
            Plan::Business => None,
        }
    }

    /// Messages per calendar month.
    pub fn monthly_messages(self) -> u64 {
        match self {
            Plan::Starter => 5_000,
            Plan::Pro => 50_000,
            Plan::Business => 200_000,
        }
    }
}

impl std::str::FromStr for Plan {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Plan::parse(name)
            .ok_or_else(|| format!("unknown plan `{name}`: use starter, pro or business"))
    }
}
