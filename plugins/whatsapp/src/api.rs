//! Graph API URLs and the reading of its successful answers. Pure: no host imports, so it
//! is tested natively.

use postdog_sdk::channel::{ChannelError, ProviderError, TemplateInfo};
use serde_json::{Value, json};

/// The Graph API host; the only one the plugin calls (its `http:` capability).
pub const GRAPH_HOST: &str = "graph.facebook.com";
/// The Graph API version used when the install does not set `api_version`.
pub const DEFAULT_API_VERSION: &str = "v21.0";
/// Templates asked for per page.
pub const TEMPLATE_PAGE_SIZE: u32 = 100;
/// Most template pages followed by one `list-templates` call.
pub const MAX_TEMPLATE_PAGES: usize = 20;
/// Fields asked for when listing templates.
const TEMPLATE_FIELDS: &str = "name,language,status,category,rejected_reason,id";
/// Fields of the business account in `account-status`.
const WABA_FIELDS: &str = "id,name,account_review_status,business_verification_status";
/// Fields of each phone number in `account-status`.
const PHONE_FIELDS: &str = "id,display_phone_number,verified_name,quality_rating,code_verification_status,name_status,messaging_limit_tier,throughput";

fn not_configured(text: String) -> ChannelError {
    ChannelError::NotConfigured(text)
}

/// The Graph API base URL for `api_version` (`v21.0` when unset), which must look like
/// `v<major>.<minor>`.
pub fn base_url(api_version: Option<&str>) -> Result<String, ChannelError> {
    let version = api_version
        .map(str::trim)
        .filter(|version| !version.is_empty())
        .unwrap_or(DEFAULT_API_VERSION);
    let valid = version
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|byte| byte.is_ascii_digit())
                && minor.bytes().all(|byte| byte.is_ascii_digit())
        });
    if !valid {
        return Err(not_configured(format!(
            "`api_version` is `{version}`; write a Graph API version such as {DEFAULT_API_VERSION}"
        )));
    }
    Ok(format!("https://{GRAPH_HOST}/{version}"))
}

/// A configured Graph object id (`phone_number_id`, `waba_id`), checked to be one path
/// segment.
pub fn object_id(key: &str, value: &str) -> Result<String, ChannelError> {
    let value = value.trim();
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    {
        return Err(not_configured(format!(
            "`{key}` is `{value}`; it must be the numeric id shown in WhatsApp Manager"
        )));
    }
    Ok(value.to_string())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `POST` target for messages and read receipts.
pub fn messages_url(base: &str, phone_number_id: &str) -> String {
    format!("{base}/{phone_number_id}/messages")
}

/// `POST` target for template submissions.
pub fn templates_url(base: &str, waba_id: &str) -> String {
    format!("{base}/{waba_id}/message_templates")
}

/// One page of the template list, after the cursor `after` if any.
pub fn template_list_url(base: &str, waba_id: &str, after: Option<&str>) -> String {
    let mut url = format!(
        "{base}/{waba_id}/message_templates?limit={TEMPLATE_PAGE_SIZE}&fields={TEMPLATE_FIELDS}"
    );
    if let Some(after) = after {
        url.push_str("&after=");
        url.push_str(&encode_query_value(after));
    }
    url
}

/// The business account's own fields.
pub fn waba_url(base: &str, waba_id: &str) -> String {
    format!("{base}/{waba_id}?fields={WABA_FIELDS}")
}

/// The business account's phone numbers.
pub fn phone_numbers_url(base: &str, waba_id: &str) -> String {
    format!("{base}/{waba_id}/phone_numbers?fields={PHONE_FIELDS}")
}

/// The JSON body of a read receipt.
pub fn mark_read_body(provider_message_id: &str) -> Result<Value, ChannelError> {
    if provider_message_id.trim().is_empty() {
        return Err(ChannelError::InvalidMessage(
            "the message id to mark as read is empty".into(),
        ));
    }
    Ok(json!({
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": provider_message_id,
    }))
}

/// A 2xx answer that does not say what it should: a provider error, not retried (the
/// request may well have taken effect).
pub fn unexpected_answer(status: u16, what: &str) -> ChannelError {
    ChannelError::Provider(ProviderError {
        code: i64::from(status),
        message: format!("the Graph API answered HTTP {status} but {what}"),
        retryable: false,
        retry_after_ms: None,
    })
}

/// The 2xx body as JSON.
pub fn json_body(status: u16, body: &[u8]) -> Result<Value, ChannelError> {
    serde_json::from_slice(body)
        .map_err(|error| unexpected_answer(status, &format!("its body is not JSON ({error})")))
}

/// The message id of a send answer (`messages[0].id`).
pub fn sent_message_id(status: u16, answer: &Value) -> Result<String, ChannelError> {
    answer
        .get("messages")
        .and_then(|messages| messages.get(0))
        .and_then(|message| message.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| unexpected_answer(status, "its answer has no `messages[0].id`"))
}

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The created template of a submission answer (`{"id", "status", "category"}`).
pub fn submitted_template(
    status: u16,
    answer: &Value,
    name: &str,
    language: &str,
) -> Result<TemplateInfo, ChannelError> {
    let id = text(answer, "id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| unexpected_answer(status, "its answer has no template `id`"))?;
    Ok(TemplateInfo {
        id,
        name: name.to_string(),
        language: language.to_string(),
        status: text(answer, "status")
            .filter(|status| !status.is_empty())
            .unwrap_or_else(|| "PENDING".to_string()),
    })
}

/// One page of the template list: its templates and the cursor of the next page, if any.
pub fn template_page(
    status: u16,
    answer: &Value,
) -> Result<(Vec<TemplateInfo>, Option<String>), ChannelError> {
    let data = answer
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| unexpected_answer(status, "its template list has no `data` array"))?;
    let mut templates = Vec::with_capacity(data.len());
    for (index, item) in data.iter().enumerate() {
        let field = |key: &str| {
            text(item, key).ok_or_else(|| {
                unexpected_answer(status, &format!("template `data[{index}]` has no `{key}`"))
            })
        };
        templates.push(TemplateInfo {
            id: field("id")?,
            name: field("name")?,
            language: field("language")?,
            status: text(item, "status").unwrap_or_else(|| "UNKNOWN".to_string()),
        });
    }
    // Graph omits `next` on the last page; the cursor alone does not mean more.
    let paging = answer.get("paging");
    let has_next = paging
        .and_then(|paging| paging.get("next"))
        .and_then(Value::as_str)
        .is_some_and(|next| !next.is_empty());
    let after = paging
        .and_then(|paging| paging.get("cursors"))
        .and_then(|cursors| cursors.get("after"))
        .and_then(Value::as_str)
        .filter(|after| !after.is_empty())
        .map(str::to_string);
    let next = match (has_next, after) {
        (true, Some(after)) if !data.is_empty() => Some(after),
        _ => None,
    };
    Ok((templates, next))
}

/// The `account-status` document: the business account and its phone numbers.
pub fn account_status(
    waba: Value,
    phone_numbers: &Value,
    status: u16,
) -> Result<String, ChannelError> {
    if !waba.is_object() {
        return Err(unexpected_answer(
            status,
            "the business account is not a JSON object",
        ));
    }
    let numbers = phone_numbers
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| unexpected_answer(status, "its phone number list has no `data` array"))?;
    Ok(json!({ "waba": waba, "phone_numbers": numbers }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url(None).unwrap(), "https://graph.facebook.com/v21.0");
        assert_eq!(
            base_url(Some("")).unwrap(),
            "https://graph.facebook.com/v21.0"
        );
        assert_eq!(
            base_url(Some("v23.0")).unwrap(),
            "https://graph.facebook.com/v23.0"
        );
        for bad in [
            "21.0",
            "v21",
            "v21.",
            "v.0",
            "v21.0/../x",
            "v21.0?x=1",
            "latest",
        ] {
            assert!(
                matches!(base_url(Some(bad)), Err(ChannelError::NotConfigured(ref t)) if t.contains("api_version")),
                "{bad}"
            );
        }
    }

    #[test]
    fn object_ids_are_one_path_segment() {
        assert_eq!(
            object_id("waba_id", " 102290129340398 ").unwrap(),
            "102290129340398"
        );
        for bad in ["", "1/2", "1?x", "../1", "1 2", "1#"] {
            assert!(
                matches!(object_id("waba_id", bad), Err(ChannelError::NotConfigured(ref t)) if t.contains("waba_id")),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls() {
        let base = base_url(None).unwrap();
        assert_eq!(
            messages_url(&base, "106540352242922"),
            "https://graph.facebook.com/v21.0/106540352242922/messages"
        );
        assert_eq!(
            templates_url(&base, "1"),
            "https://graph.facebook.com/v21.0/1/message_templates"
        );
        assert_eq!(
            template_list_url(&base, "1", None),
            "https://graph.facebook.com/v21.0/1/message_templates?limit=100&fields=name,language,status,category,rejected_reason,id"
        );
        assert_eq!(
            template_list_url(&base, "1", Some("QVFIU+/=")),
            "https://graph.facebook.com/v21.0/1/message_templates?limit=100&fields=name,language,status,category,rejected_reason,id&after=QVFIU%2B%2F%3D"
        );
        assert_eq!(
            waba_url(&base, "1"),
            "https://graph.facebook.com/v21.0/1?fields=id,name,account_review_status,business_verification_status"
        );
        assert_eq!(
            phone_numbers_url(&base, "1"),
            "https://graph.facebook.com/v21.0/1/phone_numbers?fields=id,display_phone_number,verified_name,quality_rating,code_verification_status,name_status,messaging_limit_tier,throughput"
        );
        assert_eq!(encode_query_value("a b~é"), "a%20b~%C3%A9");
    }

    #[test]
    fn read_receipts() {
        assert_eq!(
            mark_read_body("wamid.X").unwrap(),
            json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"})
        );
        assert!(matches!(
            mark_read_body(" "),
            Err(ChannelError::InvalidMessage(_))
        ));
    }

    #[test]
    fn send_answers() {
        let answer = json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
            "messages": [{"id": "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA", "message_status": "accepted"}]
        });
        assert_eq!(
            sent_message_id(200, &answer).unwrap(),
            "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
        );
        assert!(matches!(
            sent_message_id(200, &json!({"messages": []})),
            Err(ChannelError::Provider(ref p)) if !p.retryable && p.message.contains("messages[0].id")
        ));
        assert!(
            matches!(json_body(200, b"<html>"), Err(ChannelError::Provider(ref p)) if p.message.contains("not JSON"))
        );
    }

    #[test]
    fn submission_answers() {
        let info = submitted_template(
            200,
            &json!({"id": "594425479261596", "status": "PENDING", "category": "UTILITY"}),
            "order_update",
            "en_US",
        )
        .unwrap();
        assert_eq!(
            (
                info.id.as_str(),
                info.name.as_str(),
                info.language.as_str(),
                info.status.as_str()
            ),
            ("594425479261596", "order_update", "en_US", "PENDING")
        );
        let info = submitted_template(200, &json!({"id": 594425479261596i64}), "t", "en").unwrap();
        assert_eq!(
            (info.id.as_str(), info.status.as_str()),
            ("594425479261596", "PENDING")
        );
        let info =
            submitted_template(200, &json!({"id": "1", "status": "APPROVED"}), "t", "en").unwrap();
        assert_eq!(info.status, "APPROVED");
        assert!(matches!(
            submitted_template(200, &json!({}), "t", "en"),
            Err(ChannelError::Provider(_))
        ));
    }

    #[test]
    fn template_pages() {
        let page = json!({
            "data": [
                {"name": "order_update", "language": "en_US", "status": "APPROVED", "category": "UTILITY", "id": "1"},
                {"name": "promo", "language": "de", "status": "REJECTED", "category": "MARKETING", "rejected_reason": "INVALID_FORMAT", "id": "2"}
            ],
            "paging": {"cursors": {"before": "QVFIUb", "after": "QVFIUa"}, "next": "https://graph.facebook.com/v21.0/1/message_templates?after=QVFIUa"}
        });
        let (templates, next) = template_page(200, &page).unwrap();
        assert_eq!(templates.len(), 2);
        assert_eq!(
            (
                templates[1].name.as_str(),
                templates[1].language.as_str(),
                templates[1].status.as_str(),
                templates[1].id.as_str()
            ),
            ("promo", "de", "REJECTED", "2")
        );
        assert_eq!(next.as_deref(), Some("QVFIUa"));

        let last = json!({"data": [{"name": "a", "language": "en", "status": "APPROVED", "id": "3"}], "paging": {"cursors": {"before": "b", "after": "a"}}});
        assert_eq!(template_page(200, &last).unwrap().1, None);
        let (empty, next) = template_page(
            200,
            &json!({"data": [], "paging": {"cursors": {"after": "z"}, "next": "https://x"}}),
        )
        .unwrap();
        assert!(empty.is_empty() && next.is_none());
        assert!(matches!(
            template_page(200, &json!({})),
            Err(ChannelError::Provider(_))
        ));
        assert!(matches!(
            template_page(200, &json!({"data": [{"name": "a", "language": "en"}]})),
            Err(ChannelError::Provider(ref p)) if p.message.contains("data[0]") && p.message.contains("`id`")
        ));
    }

    #[test]
    fn account_status_document() {
        let waba = json!({"id": "1", "name": "Acme", "account_review_status": "APPROVED", "business_verification_status": "verified"});
        let numbers = json!({"data": [{"id": "2", "display_phone_number": "+1 555-078-3881", "verified_name": "Acme", "quality_rating": "GREEN", "code_verification_status": "VERIFIED", "name_status": "APPROVED", "messaging_limit_tier": "TIER_1K", "throughput": {"level": "STANDARD"}}], "paging": {"cursors": {"before": "x", "after": "y"}}});
        let text = account_status(waba.clone(), &numbers, 200).unwrap();
        let document: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            document,
            json!({"waba": waba, "phone_numbers": numbers["data"]})
        );
        assert!(account_status(json!([]), &numbers, 200).is_err());
        assert!(account_status(waba, &json!({}), 200).is_err());
    }
}
