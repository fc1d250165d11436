//! The tenant's contacts (needs `contacts:read` / `contacts:write`).

use crate::__private::bindings::postdog::plugin::contacts as host;

pub use host::{Contact, ContactInput, ContactsError, Lookup};

/// Finds one contact.
pub fn get(by: &Lookup) -> Result<Option<Contact>, ContactsError> {
    host::get(by)
}

/// Creates a contact or updates the one with the same phone or email.
pub fn upsert(input: &ContactInput) -> Result<Contact, ContactsError> {
    host::upsert(input)
}

/// Adds a tag to a contact.
pub fn add_tag(contact_id: &str, tag: &str) -> Result<(), ContactsError> {
    host::add_tag(contact_id, tag)
}
