//! The `cachet` binary: parse the command line, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use cachet::app::{self, Validated};
use cachet::config::{Config, RedisUrl};

/// A caching proxy for Redis.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see examples/cachet.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file and CACHET_LISTEN).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Redis to forward to, as redis://[user[:password]@]host[:port][/db].
    #[arg(long)]
    upstream: Option<String>,
    /// Worker threads (0 = one per core; overrides the file).
    #[arg(long)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate a configuration file; exit 1 on any error.
    CheckConfig { file: PathBuf },
    /// Policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print a component's imports and exports, whether cachet would load it, and the actions
    /// it returns for a sample event; exit 1 if cachet would refuse it or the call fails.
    Check {
        file: PathBuf,
        /// The event to send (default: session.created sessionId 42 teacherId 123 schoolId 7).
        #[arg(long)]
        event: Option<String>,
        /// The event's fields, as `field value` pairs after --event.
        fields: Vec<String>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// The call's deadline in milliseconds (default: a policy's default, 10).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Policy(PolicyCommand::Check {
            file,
            event,
            fields,
            json,
            timeout_ms,
        })) => check_policy(&file, event, &fields, json, timeout_ms),
        None => match serve(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cachet: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match app::load_file(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn check_policy(
    file: &std::path::Path,
    event: Option<String>,
    fields: &[String],
    json: bool,
    timeout_ms: Option<u64>,
) -> ExitCode {
    use cachet::policy::check;
    if !fields.len().is_multiple_of(2) {
        eprintln!("cachet: fields come in pairs: field value [field value ...]");
        return ExitCode::FAILURE;
    }
    let (event, fields): (String, Vec<(String, String)>) = match event {
        Some(event) => (
            event,
            fields
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
        ),
        None => (
            check::SAMPLE_EVENT.to_owned(),
            check::SAMPLE_FIELDS
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        ),
    };
    match check::check(file, &event, &fields, timeout_ms) {
        Err(error) => {
            eprintln!("cachet: {error}");
            ExitCode::FAILURE
        }
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The file (or the defaults), then the environment, then the command line; validated once,
/// after all three.
fn load_config(cli: &Cli) -> anyhow::Result<Validated> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(|name| std::env::var(name).ok())?;
    if let Some(listen) = cli.listen {
        config.proxy.listen = listen;
    }
    if let Some(threads) = cli.threads {
        config.proxy.threads = threads;
    }
    if let Some(url) = &cli.upstream {
        config.upstream.url = RedisUrl::parse(url).map_err(anyhow::Error::msg)?;
    }
    Ok(app::validate(config)?)
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let validated = load_config(&cli)?;
    let mut builder = match validated.config.proxy.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listen = validated.config.proxy.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let admin = match validated.config.admin.listen.0 {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin listener on {addr}"))?,
            ),
            None => None,
        };
        app::run_validated(validated, listener, admin, shutdown_signal()).await
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
