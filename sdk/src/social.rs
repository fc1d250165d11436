//! Social network connectors. Implement [`Social`] and export it with
//! [`export_social!`](crate::export_social).

pub use crate::__private::bindings::postdog::plugin::social_types::{
    Post, PostMetrics, PostReceipt, SocialError,
};

/// A social network connector.
pub trait Social {
    /// Publishes a post.
    fn publish(post: Post) -> Result<PostReceipt, SocialError>;
    /// Reads engagement figures of published posts.
    fn metrics(remote_ids: Vec<String>) -> Result<Vec<PostMetrics>, SocialError>;
}
