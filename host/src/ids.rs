//! Identifier newtypes. Ids that must never be mixed up (a tenant id passed where an
//! install id is expected) get their own type; all are text (UUID v7) in storage.

use std::fmt;

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new, time-ordered (UUID v7) identifier.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }
            /// Wraps an identifier read from storage, a URL or the command line.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            /// The identifier as text, as stored in the database.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// A tenant (a business using PostDog, or a reseller's sub-tenant).
    TenantId
);
text_id!(
    /// One installation of a plugin by one tenant; kv, config and grants hang off it.
    InstallId
);
