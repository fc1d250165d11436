//! What the scenarios that drive a WhatsApp number share: the real `postdog` binary as a
//! child process with extra environment (the Graph API override), the tenant's API as the
//! bench calls it, and a loopback fake Graph API inside the bench process that answers
//! sends with Meta's success JSON and notes each one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::http::{Method, StatusCode, Uri};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::server_process::{self, OPERATOR_TOKEN, bench_tenant};

/// The Meta app secret the install verifies signatures with.
pub const APP_SECRET: &str = "bench-meta-app-secret-6c0f5b2e";
/// The access token the install sends as `Authorization: Bearer`.
pub const ACCESS_TOKEN: &str = "bench-access-token";
/// The WhatsApp number's id.
pub const PHONE_NUMBER_ID: &str = "1000000001";
/// The WhatsApp Business Account's id.
pub const WABA_ID: &str = "2000000001";

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex HMAC-SHA256(APP_SECRET, body)>`.
pub fn signature(body: &[u8]) -> anyhow::Result<String> {
    let mut mac = HmacSha256::new_from_slice(APP_SECRET.as_bytes())?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// The WhatsApp id (E.164 digits) of contact `index`: a distinct valid San Francisco
/// number, 1 415 2XX XXXX (as in `inbound`).
pub fn wa_id(index: usize) -> anyhow::Result<String> {
    let exchange = (200..=299)
        .filter(|exchange| *exchange != 211)
        .nth(index / 10_000)
        .context("at most 990,000 contacts")?;
    Ok(format!("1415{exchange}{:04}", index % 10_000))
}

// ---------------------------------------------------------------------------------
// The fake Graph API.

/// One send the fake Graph API answered.
pub struct Sent {
    /// The recipient (`to`, digits).
    pub to: String,
    /// When it arrived.
    pub at: Instant,
    /// Its `biz_opaque_callback_data` (PostDog's message id), if any.
    pub callback: Option<String>,
}

/// What the fake Graph API received: each send (in arrival order; the `n`th, from 1, was
/// answered with the message id [`Sends::wamid`]`(n)`), the first send's body, and how
/// many templates were submitted.
#[derive(Default)]
pub struct Sends {
    list: Mutex<Vec<Sent>>,
    first_body: Mutex<Option<Value>>,
    templates: AtomicU64,
    /// How long the fake takes to answer a send after noting it.
    latency: Duration,
}

impl Sends {
    /// A fake that answers each send `latency` after noting it (Meta takes some 100 ms;
    /// the default fake answers at once).
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    /// The message id the fake answered the `number`th send (from 1) with.
    pub fn wamid(number: usize) -> String {
        format!("wamid.HBgLbenchsent{number:010}")
    }

    /// Sends so far.
    pub fn count(&self) -> usize {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Runs `f` over the sends so far (without copying them).
    pub fn with<T>(&self, f: impl FnOnce(&[Sent]) -> T) -> T {
        f(&self.list.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The body of the first send, as the plugin wrote it.
    pub fn first_body(&self) -> Option<Value> {
        self.first_body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `expected` sends arrived (or `timeout` passed); the count.
    pub async fn wait_for(&self, expected: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count();
            if count >= expected || Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Notes a send; its number (from 1).
    fn record(&self, request: Value, arrived: Instant) -> (String, usize) {
        let to = request["to"].as_str().unwrap_or_default().to_string();
        let callback = request["biz_opaque_callback_data"]
            .as_str()
            .map(str::to_string);
        let number = {
            let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            list.push(Sent {
                to: to.clone(),
                at: arrived,
                callback,
            });
            list.len()
        };
        if number == 1 {
            *self
                .first_body
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(request);
        }
        (to, number)
    }
}

/// `POST /v{N}.0/{phone_number_id}/messages`: Meta's success answer; `POST
/// /v{N}.0/{waba_id}/message_templates`: a template in review; any `GET` (template
/// listings): an empty page; anything else: 404.
async fn fake_graph(
    axum::extract::State(sends): axum::extract::State<Arc<Sends>>,
    method: Method,
    uri: Uri,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let arrived = Instant::now();
    let path = uri.path();
    if method == Method::POST && path.ends_with("/messages") {
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (to, number) = sends.record(request, arrived);
        if !sends.latency.is_zero() {
            tokio::time::sleep(sends.latency).await;
        }
        return (
            StatusCode::OK,
            axum::Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": Sends::wamid(number)}],
            })),
        );
    }
    if method == Method::POST && path.ends_with("/message_templates") {
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let number = sends.templates.fetch_add(1, Ordering::Relaxed) + 1;
        return (
            StatusCode::OK,
            axum::Json(json!({
                "id": format!("{}", 900_000_000_000_u64 + number),
                "status": "PENDING",
                "category": request["category"].as_str().unwrap_or("MARKETING"),
            })),
        );
    }
    if method == Method::GET {
        return (StatusCode::OK, axum::Json(json!({"data": []})));
    }
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"error": {"message": "not faked", "type": "OAuthException", "code": 100}}),
        ),
    )
}

/// Serves the fake on a loopback port (on the calling runtime); its base URL.
pub async fn start_fake_graph(sends: Arc<Sends>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().fallback(fake_graph).with_state(sends);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("the fake Graph API stopped: {error}");
        }
    });
    Ok(format!("http://{address}"))
}

// ---------------------------------------------------------------------------------
// The server under test.

/// `postdog serve` started as `server_process::ServerProcess` starts it, plus extra
/// environment (the Graph API override), which that helper does not take. Terminated on
/// drop.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    child: Child,
    /// Whether the child was already killed and reaped.
    exited: bool,
}

impl Server {
    /// Starts `binary serve` with SQLite in `data_dir` and `env`, on a free loopback port;
    /// waits until `/healthz` is 200.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = server_process::command(binary)
            .arg("serve")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("POSTDOG_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("POSTDOG_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("POSTDOG_REGISTRY")
            .env_remove("POSTDOG_OPERATOR_KEY_FILE")
            .env_remove("POSTDOG_HTTP_OVERRIDES")
            .env_remove("POSTDOG_JOB_CONCURRENCY")
            .env_remove("POSTDOG_SEND_RECONCILE_SECONDS")
            .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = Self {
            base_url: format!("http://{address}"),
            child,
            exited: false,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                server.exited = true;
                bail!("the server exited before it was ready: {status}");
            }
            if let Ok(response) = http
                .get(format!("{}/healthz", server.base_url))
                .send()
                .await
                && response.status() == 200
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server at {address} was not healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's peak resident memory (`VmHWM`), in MB.
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("no VmHWM in /proc/<pid>/status")?
            .parse()?;
        Ok(kib * 1024.0 / 1e6)
    }

    /// The CPU time the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        server_process::cpu_seconds(self.child.id())
    }

    /// Kills the server with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_hard(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL to the server")?;
        self.child.wait()?;
        self.exited = true;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        // SIGTERM for a graceful stop; SIGKILL if it does not exit within 5 s.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------
// The API.

/// The tenant's API, as the bench calls it.
pub struct Api {
    /// The client (its pool is shared by every call).
    pub http: reqwest::Client,
    /// The server's base URL.
    pub base_url: String,
    /// The tenant's API key.
    pub key: String,
}

impl Api {
    /// Sends a request with the API key; the status and the JSON body (`null` if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// As `call`, failing unless the status is `expected`.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        expected: u16,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if status != expected {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    /// POSTs a signed webhook to `/hooks/{install_id}`; fails unless it is answered 200.
    pub async fn webhook(&self, install_id: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/hooks/{install_id}", self.base_url))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature(&body)?)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status != 200 {
            bail!("a webhook was answered {status} {}", response.text().await?);
        }
        Ok(())
    }
}

/// Creates the bench tenant (`server_process::bench_tenant`); its API.
pub async fn tenant_api(base_url: &str) -> anyhow::Result<Api> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let key = bench_tenant(&http, base_url).await?;
    Ok(Api {
        http,
        base_url: base_url.to_string(),
        key,
    })
}

/// Installs `postdog/whatsapp` with `http:graph.facebook.com` and `webhook`, the fake's
/// ids and `throughput_per_second` = `throughput`; the answer's status and body.
pub async fn install_whatsapp(api: &Api, throughput: u32) -> anyhow::Result<(u16, Value)> {
    api.call(
        reqwest::Method::POST,
        "/v1/installs",
        Some(&json!({
            "plugin": "postdog/whatsapp",
            "grants": ["http:graph.facebook.com", "webhook"],
            "config": {
                "phone_number_id": PHONE_NUMBER_ID,
                "waba_id": WABA_ID,
                "throughput_per_second": throughput,
            },
        })),
    )
    .await
}

/// Sets the WhatsApp install's three secrets (access token, app secret, verify token).
pub async fn set_whatsapp_secrets(api: &Api, install_id: &str) -> anyhow::Result<()> {
    for (name, value) in [
        ("access_token", ACCESS_TOKEN),
        ("app_secret", APP_SECRET),
        ("verify_token", "bench-verify-token"),
    ] {
        let (status, body) = api
            .call(
                reqwest::Method::PUT,
                &format!("/v1/installs/{install_id}/secrets/{name}"),
                Some(&json!({ "value": value })),
            )
            .await?;
        if !(200..300).contains(&status) {
            bail!("setting the secret {name}: {status} {body}");
        }
    }
    Ok(())
}

/// Creates the bench tenant and connects its WhatsApp number (`install_whatsapp`, which
/// must succeed, and `set_whatsapp_secrets`); the API and the install id.
pub async fn connect_whatsapp(base_url: &str, throughput: u32) -> anyhow::Result<(Api, String)> {
    let api = tenant_api(base_url).await?;
    let (status, install) = install_whatsapp(&api, throughput).await?;
    if status != 201 {
        bail!("installing postdog/whatsapp: {status} {install}");
    }
    let install_id = install["id"]
        .as_str()
        .context("install without id")?
        .to_string();
    set_whatsapp_secrets(&api, &install_id).await?;
    Ok((api, install_id))
}
