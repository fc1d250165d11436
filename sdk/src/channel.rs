//! Messaging channel connectors. Implement [`Channel`] and export it with
//! [`export_channel!`](crate::export_channel).

pub use crate::__private::bindings::postdog::plugin::channel_types::{
    ChannelError, Choice, InboundContent, InboundEvent, InboundMedia, InboundMessage, Location,
    OutboundMessage, ProviderError, Reaction, SendReceipt, StatusUpdate, TemplateDefinition,
    TemplateInfo, TemplateUpdate, WebhookOutcome,
};

use crate::message::{HttpRequest, HttpResponse};

/// A messaging channel connector.
pub trait Channel {
    /// Sends one message.
    fn send(message: OutboundMessage) -> Result<SendReceipt, ChannelError>;

    /// Answers the provider's webhook verification handshake. Default: 404.
    fn verify_webhook(_request: HttpRequest) -> Result<HttpResponse, ChannelError> {
        Ok(HttpResponse::status(404))
    }

    /// Checks a webhook and turns it into events.
    fn handle_webhook(request: HttpRequest) -> Result<WebhookOutcome, ChannelError>;

    /// Submits a template for review. Default: unsupported.
    fn submit_template(_template: TemplateDefinition) -> Result<TemplateInfo, ChannelError> {
        Err(ChannelError::Unsupported(
            "this channel has no templates".into(),
        ))
    }

    /// Lists the provider's templates. Default: unsupported.
    fn list_templates() -> Result<Vec<TemplateInfo>, ChannelError> {
        Err(ChannelError::Unsupported(
            "this channel has no templates".into(),
        ))
    }

    /// Marks a received message as read at the provider. Default: unsupported.
    fn mark_read(_provider_message_id: String) -> Result<(), ChannelError> {
        Err(ChannelError::Unsupported(
            "this channel has no read receipts".into(),
        ))
    }

    /// The connected account's state at the provider, as JSON text. Default: unsupported.
    fn account_status() -> Result<String, ChannelError> {
        Err(ChannelError::Unsupported(
            "this channel reports no account status".into(),
        ))
    }
}

impl ProviderError {
    /// A provider error with a code and a message.
    pub fn new(code: i64, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
            retry_after_ms: None,
        }
    }
}
