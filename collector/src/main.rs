//! `witness-collector`: thin wrapper over the library (flags, config, serve).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use witness_collector::config::HumanDuration;
use witness_collector::store::Backend;
use witness_collector::{admin, app, store, tokens, Config};

#[derive(Parser)]
#[command(name = "witness-collector", version, about = "Witness collector")]
struct Cli {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long, short, global = true, env = "WITNESS_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Serve,
    /// Check the configuration (without starting anything) and say what it means.
    CheckConfig,
    /// Print the example configuration: every setting with its default, commented.
    ExampleConfig,
    /// Manage invite and probe tokens (in the existing store of --config).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create an invite token (printed once; only its hash is stored).
    Create {
        /// Registrations allowed with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Validity, e.g. 7d (default: no expiry).
        #[arg(long)]
        expires: Option<HumanDuration>,
        /// Note for the operator.
        #[arg(long)]
        note: Option<String>,
    },
    /// List invites and probes.
    List,
    /// Revoke an invite or a probe by id; takes effect at once.
    Revoke {
        /// Invite or probe id.
        id: String,
    },
}

/// Errors are one human line (the cause chain, `: `-separated), never a backtrace: they are
/// the operator's to read, whatever RUST_BACKTRACE says.
#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("witness-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Logs on stderr (stdout carries the listening addresses), plain text unless stderr is a
    // terminal that takes colour: journald and log files get no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    if let Command::ExampleConfig = cli.command {
        print!("{}", admin::EXAMPLE_CONFIG);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    if let Command::CheckConfig = cli.command {
        print!("{}", admin::describe(&config, cli.config.as_deref()));
        if let Some(path) = &config.asn.database {
            let table = witness_collector::asn::AsnDb::load(path)?;
            let (v4, v6) = table.len();
            println!(
                "asn table: {} ({v4} IPv4 and {v6} IPv6 ranges)",
                path.display()
            );
        }
        for w in admin::store_warnings(&config.store.url) {
            println!("warning: {w}");
        }
        println!("configuration OK");
        return Ok(());
    }
    if let Command::Token { .. } = cli.command {
        admin::require_existing_store(&config, cli.config.as_deref())?;
        eprintln!(
            "store: {} (config: {})",
            store::redacted(&config.store.url),
            admin::config_source(cli.config.as_deref())
        );
    }
    let store = store::open(&config.store)
        .await
        .with_context(|| format!("opening the store {}", store::redacted(&config.store.url)))?;
    match cli.command {
        Command::CheckConfig | Command::ExampleConfig => Ok(()),
        Command::Serve => {
            for w in admin::store_warnings(&config.store.url) {
                tracing::warn!("{w}");
            }
            if matches!(Backend::of(&config.store.url), Ok(Backend::Postgres)) {
                // What sslmode=prefer (the default) ended up with, said once at start.
                match admin::pg_connection_encrypted(&config.store.url).await {
                    Ok(true) => tracing::info!("store connection to PostgreSQL is encrypted (TLS)"),
                    Ok(false) => tracing::warn!(
                        sslmode =
                            admin::pg_sslmode(&config.store.url).unwrap_or_else(|| "prefer".into()),
                        "store connection to PostgreSQL is NOT encrypted: set \
                         ?sslmode=verify-full&sslrootcert=CA.pem to require TLS"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not tell whether the store connection is encrypted")
                    }
                }
            }
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("binding {}", config.server.listen))?;
            let metrics_listener = match config.server.metrics_listen {
                Some(addr) => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr}"))?,
                ),
                None => None,
            };
            // The bound addresses on stdout, one line each: with port 0 this is how a
            // supervisor or a test learns them.
            let api_addr = listener.local_addr()?;
            println!("witness-collector listening on http://{api_addr}/");
            if let Some(m) = &metrics_listener {
                println!(
                    "witness-collector metrics on http://{}/metrics",
                    m.local_addr()?
                );
            }
            tracing::info!(listen = %api_addr, "witness-collector serving");
            let state = app::AppState::new(config, store)?;
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async {
                        match term.as_mut() {
                            Some(t) => { t.recv().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => {}
                }
            };
            app::serve_with(listener, metrics_listener, state, shutdown).await
        }
        Command::Token { action } => match action {
            TokenAction::Create {
                uses,
                expires,
                note,
            } => {
                let inv = tokens::create(store.as_ref(), uses, expires, note).await?;
                println!("invite id: {}", inv.id);
                println!("token:     {}", inv.token);
                if let Some(e) = inv.expires_at {
                    println!("expires:   {}", e.to_rfc3339());
                }
                println!("The token is shown only now; the collector keeps only its hash.");
                Ok(())
            }
            TokenAction::List => {
                print!("{}", tokens::table(&store.list_tokens().await?));
                Ok(())
            }
            TokenAction::Revoke { id } => {
                if tokens::revoke(store.as_ref(), &id).await? {
                    println!("revoked {id}");
                    Ok(())
                } else {
                    anyhow::bail!("no live invite or probe with id {id}")
                }
            }
        },
    }
}
