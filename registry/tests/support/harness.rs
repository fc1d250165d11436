//! Shared by the integration tests: fixtures (keys, manifests, fake components,
//! artifacts) and the two backends under test — a directory registry in a temporary
//! directory, and the HTTP service on 127.0.0.1:0 in front of one, reached through
//! `Registry::open("http://…")`.

#![allow(dead_code)] // Each test crate uses a different part of the harness.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use postdog_registry::artifact::COMPONENT_HEADER;
use postdog_registry::{Artifact, DirRegistry, PublisherKey, Registry};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The operator token the HTTP service runs with.
pub const OPERATOR_TOKEN: &str = "operator-secret-for-tests";

/// A deterministic publisher key.
pub fn key(seed: u8) -> PublisherKey {
    PublisherKey::from_seed([seed; 32])
}

/// A fake component: the component header and a few bytes (the registry does not parse
/// components further).
pub fn component(extra: &str) -> Vec<u8> {
    let mut bytes = COMPONENT_HEADER.to_vec();
    bytes.extend_from_slice(extra.as_bytes());
    bytes
}

/// A plugin to publish.
#[derive(Clone)]
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub world: String,
    pub categories: Vec<String>,
    pub description: String,
}

impl Plugin {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            world: "flow-action".into(),
            categories: vec!["utility".into()],
            description: format!("The {name} plugin"),
        }
    }

    pub fn world(mut self, world: &str) -> Self {
        self.world = world.into();
        self
    }

    pub fn categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(ToString::to_string).collect();
        self
    }

    pub fn description(mut self, description: &str) -> Self {
        self.description = description.into();
        self
    }

    pub fn manifest(&self) -> String {
        let categories: Vec<String> = self.categories.iter().map(|c| format!("\"{c}\"")).collect();
        format!(
            r#"[plugin]
name = "{}"
version = "{}"
world = "{}"
wit = "0.1.0"
description = "{}"
categories = [{}]
capabilities = ["kv", "http:api.example.com"]

[config]
required = ["api_url"]
[config.properties.api_url]
type = "string"
format = "uri"
[config.properties.api_token]
type = "string"
secret = true
"#,
            self.name,
            self.version,
            self.world,
            self.description,
            categories.join(", ")
        )
    }

    pub fn artifact(&self, key: &PublisherKey) -> Result<Artifact> {
        Artifact::build(
            &self.manifest(),
            component(&format!("{}@{}", self.name, self.version)),
            key,
        )
        .context("building a test artifact")
    }

    pub fn bytes(&self, key: &PublisherKey) -> Result<Vec<u8>> {
        Ok(self.artifact(key)?.to_bytes())
    }
}

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Http,
}

/// A registry under test and what it stands on.
pub struct Backend {
    pub kind: Kind,
    pub registry: Registry,
    /// Where the data is (the HTTP service's store, for `Kind::Http`).
    pub dir: TempDir,
    pub server: Option<Server>,
}

impl Backend {
    pub fn dir() -> Result<Backend> {
        let dir = TempDir::new()?;
        let registry = Registry::open(path_str(dir.path())?)?;
        Ok(Backend {
            kind: Kind::Dir,
            registry,
            dir,
            server: None,
        })
    }

    pub async fn http() -> Result<Backend> {
        let dir = TempDir::new()?;
        let server = Server::start(dir.path(), Some(OPERATOR_TOKEN.to_string())).await?;
        let registry = Registry::open(&server.base_url)?;
        Ok(Backend {
            kind: Kind::Http,
            registry,
            dir,
            server: Some(server),
        })
    }

    /// The operator token this backend's rotation needs.
    pub fn operator_token(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Dir => None,
            Kind::Http => Some(OPERATOR_TOKEN),
        }
    }

    /// Another handle on the same registry, as a second process would open it.
    pub fn reopen(&self) -> Result<Registry> {
        match &self.server {
            Some(server) => Ok(Registry::open(&server.base_url)?),
            None => Ok(Registry::open(path_str(self.dir.path())?)?),
        }
    }

    /// Where the artifact with this digest is stored.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }
}

/// The registry HTTP service running on 127.0.0.1:0 until dropped.
pub struct Server {
    pub base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(dir: &Path, operator_token: Option<String>) -> Result<Server> {
        let store = DirRegistry::open(dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(postdog_registry::server::serve(
            listener,
            store,
            operator_token,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Server {
            base_url: format!("http://{address}"),
            shutdown: Some(shutdown),
            task,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .context("the temporary directory's path is not UTF-8")
}
