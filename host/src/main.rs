//! The `postdog` binary: a thin command-line front over `postdog_host`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postdog_host::plans::Plan;
use postdog_host::plugin_author::{self, NewOptions, PackageOptions, RegistryServeOptions};
use postdog_host::plugin_dev::{self, RunOptions};
use postdog_host::runtime::World;
use postdog_host::server::{self, ServeOptions};

/// mimalloc instead of glibc's malloc: per-thread free lists without arena locks (malloc
/// and free were a sixth of the async workers' time in the campaign benchmark) and far
/// less memory stranded in per-thread arenas (the server's peak resident memory). The
/// `system-allocator` feature turns it off (heap profilers see only malloc).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// PostDog: open, self-hostable customer messaging.
#[derive(Parser)]
#[command(name = "postdog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite in --data-dir unless DATABASE_URL is set).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        database: DatabaseArgs,
        /// Token for the operator API (`/admin/v1/…`); the operator API is off without it.
        #[arg(long, env = "POSTDOG_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
    },
    /// Run database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Tenant administration.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Plugin author tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The plugin registry service.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// The durable job queue: list, retry dead jobs, cancel.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs of every tenant, newest first, as JSON lines.
    List {
        /// Only jobs in this state: queued, running, done, dead or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Put a dead or cancelled job back in the queue, due now.
    Retry {
        /// The job's id.
        id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// The job's id.
        id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Where the data lives.
#[derive(clap::Args)]
struct DatabaseArgs {
    /// Directory for the embedded database and caches.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// PostgreSQL (or SQLite) URL; overrides the embedded database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its id and first admin API key (shown only once) as JSON.
    Create {
        /// The tenant's name.
        #[arg(long)]
        name: String,
        /// Its plan: starter, pro or business.
        #[arg(long, default_value = "starter")]
        plan: Plan,
        /// Make it a sub-tenant of this Business tenant.
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a component and call it once, printing the result as JSON.
    Run {
        /// The component (.wasm) to run.
        component: PathBuf,
        /// The world it must implement: flow-action, messaging-channel, social-channel, integration.
        #[arg(long)]
        world: World,
        /// The function to call (default: run / send / publish / handle-webhook).
        #[arg(long)]
        call: Option<String>,
        /// The input as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Configuration value KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = plugin_dev::parse_key_value)]
        config: Vec<(String, String)>,
        /// Secret KEY=VALUE (repeatable).
        #[arg(long = "secret", value_parser = plugin_dev::parse_key_value)]
        secrets: Vec<(String, String)>,
        /// Capability to grant, e.g. `kv` or `http:api.example.com` (repeatable).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Keep kv data in this directory between runs.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create a publisher key (ed25519) that signs your artifacts and yanks.
    Keygen {
        /// Where to write the secret key (mode 0600).
        #[arg(long, default_value = plugin_author::DEFAULT_KEY_FILE)]
        out: PathBuf,
        /// Replace an existing key file (the key in it is lost).
        #[arg(long)]
        force: bool,
    },
    /// Create a plugin crate that builds and passes its tests out of the box.
    New {
        /// The plugin's name (crate name and the part after `publisher/`), e.g. `order-notifier`.
        name: String,
        /// The world it implements: flow-action, messaging-channel, social-channel, integration.
        #[arg(long)]
        world: World,
        /// The publisher it is published under (default: derived from your user name).
        #[arg(long)]
        publisher: Option<String>,
        /// The directory to create `<name>/` in.
        #[arg(long = "dir", default_value = ".")]
        parent: PathBuf,
    },
    /// Check a plugin against its manifest and sign it into an artifact (.pdpkg).
    Package {
        /// The plugin's manifest.
        #[arg(long, default_value = "postdog-plugin.toml")]
        manifest: PathBuf,
        /// The component (default: the crate's `target/wasm32-wasip2/release/<crate>.wasm`).
        #[arg(long)]
        component: Option<PathBuf>,
        /// The publisher key file (`postdog plugin keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the artifact (default: `<publisher>-<name>-<version>.pdpkg`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Publish an artifact to a registry.
    Publish {
        /// The artifact (.pdpkg) to publish.
        artifact: PathBuf,
        /// The registry: an http(s):// URL or a directory.
        #[arg(long, env = "POSTDOG_REGISTRY")]
        registry: String,
    },
    /// Yank a published version: no longer offered, existing installs keep working.
    Yank {
        /// `publisher/name@version`.
        version: String,
        /// The registry: an http(s):// URL or a directory.
        #[arg(long, env = "POSTDOG_REGISTRY")]
        registry: String,
        /// The publisher key file the plugin was published with.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve a directory registry over HTTP until SIGINT/SIGTERM.
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// The registry's directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Token for operator actions (publisher key rotation); they are off without it.
        #[arg(long, env = "POSTDOG_REGISTRY_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTDOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("POSTDOG_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn create_tenant(
    name: &str,
    plan: Plan,
    parent: Option<String>,
    database: &DatabaseArgs,
) -> anyhow::Result<()> {
    let storage = server::migrate(&database.data_dir, database.database_url.as_deref()).await?;
    let parent = parent.map(postdog_host::ids::TenantId::new);
    let result =
        postdog_host::tenants::provision_tenant(&storage, name, plan, parent.as_ref()).await;
    storage.close().await;
    let (tenant, key) = result?;
    println!(
        "{}",
        serde_json::json!({ "tenant_id": tenant.id, "api_key": key.secret })
    );
    Ok(())
}

/// `postdog plugin …`: the plugin author's commands.
async fn plugin_command(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Run {
            component,
            world,
            call,
            input,
            config,
            secrets,
            grants,
            data_dir,
        } => plugin_dev::run(RunOptions {
            component,
            world,
            call,
            input,
            config,
            secrets,
            grants,
            data_dir,
        })
        .await
        .map(|output| println!("{output:#}")),
        PluginCommand::Keygen { out, force } => {
            plugin_author::keygen(&out, force).map(|report| println!("{report}"))
        }
        PluginCommand::New {
            name,
            world,
            publisher,
            parent,
        } => plugin_author::new_plugin(&NewOptions {
            name,
            world,
            publisher,
            parent,
        })
        .map(|report| println!("{report}")),
        PluginCommand::Package {
            manifest,
            component,
            key,
            out,
        } => {
            let report = plugin_author::package(PackageOptions {
                manifest,
                component,
                key,
                out,
            })
            .await?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{report}");
            Ok(())
        }
        PluginCommand::Publish { artifact, registry } => {
            plugin_author::publish(&artifact, &registry)
                .await
                .map(|report| println!("{report}"))
        }
        PluginCommand::Yank {
            version,
            registry,
            key,
        } => plugin_author::yank(&version, &registry, &key)
            .await
            .map(|message| println!("{message}")),
    }
}

async fn jobs_command(command: JobsCommand) -> anyhow::Result<()> {
    let (database, action) = match &command {
        JobsCommand::List { database, .. } => (database, "list"),
        JobsCommand::Retry { database, .. } => (database, "retry"),
        JobsCommand::Cancel { database, .. } => (database, "cancel"),
    };
    let storage = server::migrate(&database.data_dir, database.database_url.as_deref()).await?;
    let outcome = match command {
        JobsCommand::List { state, limit, .. } => {
            if let Some(state) = &state
                && !["queued", "running", "done", "dead", "cancelled"].contains(&state.as_str())
            {
                anyhow::bail!("--state is queued, running, done, dead or cancelled, not `{state}`");
            }
            for job in storage
                .all_jobs(state.as_deref(), limit.clamp(1, 10_000))
                .await?
            {
                println!("{}", serde_json::to_string(&job)?);
            }
            Ok(())
        }
        JobsCommand::Retry { id, .. } => {
            if storage.retry_job(None, &id).await? {
                println!("job {id} is queued again");
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "job {id} does not exist or is not dead or cancelled"
                ))
            }
        }
        JobsCommand::Cancel { id, .. } => {
            if storage.cancel_job(None, &id).await? {
                println!("job {id} is cancelled");
                Ok(())
            } else {
                Err(anyhow::anyhow!("job {id} does not exist or has finished"))
            }
        }
    };
    storage.close().await;
    outcome.map_err(|error| error.context(format!("postdog jobs {action}")))
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            database,
            operator_token,
        } => {
            server::serve(
                ServeOptions {
                    listen,
                    data_dir: database.data_dir,
                    database_url: database.database_url,
                    operator_token,
                },
                server::shutdown_signal(),
            )
            .await
        }
        Command::Migrate { database } => {
            server::migrate(&database.data_dir, database.database_url.as_deref())
                .await
                .map(|_| eprintln!("migrations are up to date"))
        }
        Command::Tenant {
            command:
                TenantCommand::Create {
                    name,
                    plan,
                    parent,
                    database,
                },
        } => create_tenant(&name, plan, parent, &database).await,
        Command::Plugin { command } => plugin_command(command).await,
        Command::Jobs { command } => jobs_command(command).await,
        Command::Registry {
            command:
                RegistryCommand::Serve {
                    listen,
                    dir,
                    operator_token,
                },
        } => {
            plugin_author::serve_registry(
                RegistryServeOptions {
                    listen,
                    dir,
                    operator_token,
                },
                server::shutdown_signal(),
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
