//! `whatsapp`: PostDog's WhatsApp Cloud API channel connector (`postdog/whatsapp`).
//!
//! - **send**: `POST https://graph.facebook.com/{api_version}/{phone_number_id}/messages`
//!   for text, template, media-by-link and interactive messages, with the kernel's
//!   message id as `biz_opaque_callback_data`; Graph errors become typed channel errors.
//! - **verify-webhook**: Meta's `hub.mode=subscribe&hub.verify_token&hub.challenge`
//!   handshake against the `verify_token` secret.
//! - **handle-webhook**: checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the
//!   `app_secret`) before reading anything, then turns messages, delivery statuses and
//!   template reviews into kernel events.
//! - **submit-template**, **list-templates**, **mark-read**, **account-status** through the
//!   business account (`waba_id`).
//!
//! Configuration: `phone_number_id`, `waba_id`, `api_version` (default `v21.0`),
//! `throughput_per_second` (read by the kernel's rate limiter, not here); secrets:
//! `access_token`, `app_secret`, `verify_token`. Capabilities: `http:graph.facebook.com`,
//! `webhook`.
//!
//! The pure parts (request bodies, error mapping, signature and webhook parsing) live in
//! modules without host calls, so `cargo test` runs them natively.

mod api;
mod errors;
mod outbound;
mod webhook;

use postdog_sdk::channel::{
    Channel, ChannelError, OutboundMessage, SendReceipt, TemplateDefinition, TemplateInfo,
    WebhookOutcome,
};
use postdog_sdk::message::{DeliveryStatus, HttpRequest, HttpResponse};
use postdog_sdk::{config, http, log};
use serde_json::Value;

/// The WhatsApp Cloud API connector.
struct WhatsApp;

fn not_configured(error: impl std::fmt::Display) -> ChannelError {
    ChannelError::NotConfigured(error.to_string())
}

/// What a Graph API call needs: the versioned base URL and the token.
struct Graph {
    base: String,
    token: String,
}

impl Graph {
    fn from_config() -> Result<Self, ChannelError> {
        let base = api::base_url(config::get("api_version").as_deref())?;
        let token = config::require_secret("access_token").map_err(not_configured)?;
        if token.trim().is_empty() {
            return Err(ChannelError::NotConfigured(
                "the secret `access_token` is empty".into(),
            ));
        }
        Ok(Self {
            base,
            token: token.trim().to_string(),
        })
    }

    /// A configured object id, checked.
    fn id(key: &str) -> Result<String, ChannelError> {
        let value = config::require(key).map_err(not_configured)?;
        api::object_id(key, &value)
    }

    /// Sends `request` with the token and returns the status and JSON body of a 2xx
    /// answer; anything else becomes a typed error.
    fn call(&self, request: http::Request) -> Result<(u16, Value), ChannelError> {
        let response = http::fetch(&request.bearer(&self.token)).map_err(|error| {
            let mapped = errors::from_http(&error);
            log::warn(&format!("Graph API call failed: {mapped:?}"));
            mapped
        })?;
        if !response.is_success() {
            let error = errors::from_response(
                response.status,
                response.header("retry-after"),
                &response.body,
            );
            log::warn(&format!(
                "Graph API answered HTTP {}: {error:?}",
                response.status
            ));
            return Err(error);
        }
        let body = api::json_body(response.status, &response.body)?;
        Ok((response.status, body))
    }

    fn get(&self, url: String) -> Result<(u16, Value), ChannelError> {
        self.call(http::Request::get(url))
    }

    fn post(&self, url: String, body: &Value) -> Result<(u16, Value), ChannelError> {
        self.call(http::Request::post(url).json(body))
    }
}

impl Channel for WhatsApp {
    fn send(message: OutboundMessage) -> Result<SendReceipt, ChannelError> {
        let body = outbound::message_body(&message)?;
        let graph = Graph::from_config()?;
        let phone_number_id = Graph::id("phone_number_id")?;
        let (status, answer) =
            graph.post(api::messages_url(&graph.base, &phone_number_id), &body)?;
        Ok(SendReceipt {
            provider_message_id: api::sent_message_id(status, &answer)?,
            status: DeliveryStatus::Accepted,
        })
    }

    fn verify_webhook(request: HttpRequest) -> Result<HttpResponse, ChannelError> {
        let verify_token = config::require_secret("verify_token").map_err(not_configured)?;
        if verify_token.is_empty() {
            return Err(ChannelError::NotConfigured(
                "the secret `verify_token` is empty".into(),
            ));
        }
        webhook::verify(&request, &verify_token)
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookOutcome, ChannelError> {
        let app_secret = config::require_secret("app_secret").map_err(not_configured)?;
        if app_secret.is_empty() {
            return Err(ChannelError::NotConfigured(
                "the secret `app_secret` is empty".into(),
            ));
        }
        webhook::check_signature(&request, &app_secret)?;
        let parsed = webhook::parse(&request.body)?;
        for note in &parsed.skipped {
            log::debug(&format!("webhook: skipped {note}"));
        }
        Ok(WebhookOutcome {
            events: parsed.events,
            response: HttpResponse::status(200),
        })
    }

    fn submit_template(template: TemplateDefinition) -> Result<TemplateInfo, ChannelError> {
        let body = outbound::template_body(&template)?;
        let graph = Graph::from_config()?;
        let waba_id = Graph::id("waba_id")?;
        let (status, answer) = graph.post(api::templates_url(&graph.base, &waba_id), &body)?;
        let name = body["name"].as_str().unwrap_or(&template.name);
        let language = body["language"].as_str().unwrap_or(&template.language);
        api::submitted_template(status, &answer, name, language)
    }

    fn list_templates() -> Result<Vec<TemplateInfo>, ChannelError> {
        let graph = Graph::from_config()?;
        let waba_id = Graph::id("waba_id")?;
        let mut templates = Vec::new();
        let mut after: Option<String> = None;
        for page in 1..=api::MAX_TEMPLATE_PAGES {
            let url = api::template_list_url(&graph.base, &waba_id, after.as_deref());
            let (status, answer) = graph.get(url)?;
            let (items, next) = api::template_page(status, &answer)?;
            templates.extend(items);
            match next {
                // A cursor that does not move would loop until the page cap.
                Some(cursor) if after.as_deref() != Some(cursor.as_str()) => after = Some(cursor),
                _ => return Ok(templates),
            }
            if page == api::MAX_TEMPLATE_PAGES {
                log::warn(&format!(
                    "list-templates stopped after {page} pages ({} templates); more exist",
                    templates.len()
                ));
            }
        }
        Ok(templates)
    }

    fn mark_read(provider_message_id: String) -> Result<(), ChannelError> {
        let body = api::mark_read_body(&provider_message_id)?;
        let graph = Graph::from_config()?;
        let phone_number_id = Graph::id("phone_number_id")?;
        graph.post(api::messages_url(&graph.base, &phone_number_id), &body)?;
        Ok(())
    }

    fn account_status() -> Result<String, ChannelError> {
        let graph = Graph::from_config()?;
        let waba_id = Graph::id("waba_id")?;
        let (_, waba) = graph.get(api::waba_url(&graph.base, &waba_id))?;
        let (status, phone_numbers) = graph.get(api::phone_numbers_url(&graph.base, &waba_id))?;
        api::account_status(waba, &phone_numbers, status)
    }
}

postdog_sdk::export_channel!(WhatsApp);
