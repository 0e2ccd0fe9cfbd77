//! The `cachet` binary: parse the command line, set up logging, load the config, run.
//!
//! Each subcommand is one variant of [`Command`] and one function below; `main` only
//! dispatches. `--help` ends with the environment variables cachet reads, printed from the
//! list the config code reads them from (`cachet::config::env::VARIABLES`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use cachet::app::{self, Validated};
use cachet::config::{Config, RedisUrl, env};

/// A caching proxy for Redis.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see examples/cachet.toml); without one, the built-in
    /// defaults (listed at the end of `cachet --help`).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file and CACHET_LISTEN).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address of the TLS listener (overrides `[proxy.tls] listen`; needs `[proxy.tls]`).
    #[arg(long)]
    tls_listen: Option<std::net::SocketAddr>,
    /// Redis to forward to, as redis://[user[:password]@]host[:port][/db] (overrides the file
    /// and REDIS_HOST/REDIS_PORT).
    #[arg(long, global = true)]
    upstream: Option<String>,
    /// Worker threads (0 = one per core; overrides the file).
    #[arg(long)]
    threads: Option<usize>,
    /// Log lines as text, or as one JSON object per line for log shippers. Colours only
    /// when stderr is a terminal and NO_COLOR is unset; the filter is RUST_LOG.
    #[arg(
        long,
        value_enum,
        env = "CACHET_LOG_FORMAT",
        default_value_t = LogFormat::Text,
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate a configuration file, print every error; exit 1 on any.
    CheckConfig { file: PathBuf },
    /// Policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Remove what cachet wrote into Redis, and nothing else.
    ///
    /// The tag index's keys (cachet:t/d/e/k:{...}), the [events] dead-letter and log streams,
    /// and the `cachet` function library; never an application key, nor a warmer's stream.
    /// Stop every cachet in front of that Redis first. Redis is the upstream that --config,
    /// the environment and --upstream give, as for serving.
    Uninstall {
        /// List what would be removed, one `kind<TAB>name` per line; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do remove (required unless --dry-run).
        #[arg(long, short, required_unless_present = "dry_run")]
        yes: bool,
    },
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
    /// Write a new policy that builds as it is: the WIT contract, a template, a README.
    New {
        /// The policy's name: 1 to 64 of a-z A-Z 0-9 - _, starting with a letter.
        name: String,
        /// rust, js or python.
        #[arg(long)]
        lang: cachet::policy::scaffold::Lang,
        /// The folder to write (default: ./NAME); it must be new or empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the policy in DIR into DIR/<folder name>.wasm (Rust: cargo + wit-component;
    /// JavaScript: jco; Python: componentize-py), installing a missing tool where it can, then
    /// check it as `policy check` does with the sample event.
    Build { dir: PathBuf },
}

fn main() -> ExitCode {
    let matches = Cli::command().after_help(environment_help()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    let outcome = match &cli.command {
        Some(Command::CheckConfig { file }) => return check_config(file),
        Some(Command::Policy(PolicyCommand::Check {
            file,
            event,
            fields,
            json,
            timeout_ms,
        })) => return check_policy(file, event.clone(), fields, *json, *timeout_ms),
        Some(Command::Policy(PolicyCommand::New { name, lang, dir })) => {
            new_policy(name, *lang, dir.as_deref())
        }
        Some(Command::Policy(PolicyCommand::Build { dir })) => return build_policy(dir),
        Some(Command::Uninstall { dry_run, .. }) => uninstall(&cli, *dry_run),
        None => serve(&cli),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cachet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `--help` epilogue: the defaults (from `Config::default()`), precedence, and every
/// environment variable, from the list the code reads.
fn environment_help() -> String {
    let defaults = Config::default();
    let admin = match defaults.admin.listen.0 {
        Some(addr) => addr.to_string(),
        None => "none".to_owned(),
    };
    let mut help = format!(
        "Defaults without a file: --listen {}, --upstream {}, --threads {}, admin listener \
         {admin}; every other key is in examples/cachet.toml.\n\
         Precedence, lowest first: the defaults, the --config file, the environment, flags.\n\n\
         Environment:\n",
        defaults.proxy.listen, defaults.upstream.url, defaults.proxy.threads,
    );
    let mut line = |name: &str, what: &str| {
        help.push_str(&format!("  {name:<29} {what}\n"));
    };
    for var in env::VARIABLES {
        line(var.name, var.help);
    }
    line("CACHET_LOG_FORMAT", "text or json (see --log-format)");
    line(
        "RUST_LOG",
        "log filter, e.g. warn or cachet=debug (default info)",
    );
    line(
        "NO_COLOR",
        "when set and not empty, text logs have no colours",
    );
    help
}

/// Text or JSON lines on stderr, filtered by RUST_LOG (default `info`). Colours only on a
/// terminal: a file or a pipe gets plain text.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init();
        }
        LogFormat::Json => builder.json().init(),
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

fn new_policy(
    name: &str,
    lang: cachet::policy::scaffold::Lang,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let dir = dir.map_or_else(|| PathBuf::from(name), PathBuf::from);
    let written = cachet::policy::scaffold::create(&dir, name, lang)?;
    println!(
        "wrote a {lang} policy in {}; build it with: cachet policy build {}",
        written.display(),
        written.display()
    );
    Ok(())
}

/// Builds the policy in `dir`, then checks the component as `policy check` would.
fn build_policy(dir: &std::path::Path) -> ExitCode {
    use cachet::policy::scaffold;
    let options = scaffold::BuildOptions {
        show_output: true,
        ..Default::default()
    };
    let wasm = match scaffold::build(dir, &options) {
        Ok(wasm) => wasm,
        Err(error) => {
            eprintln!("cachet: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("built {}", wasm.display());
    // A check of what was built, not of its speed: a generous deadline for a cold call.
    check_policy(&wasm, None, &[], false, Some(1_000))
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

/// The file (or the defaults), then the environment, then the command line; not yet
/// validated.
fn resolve_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(|name| std::env::var(name).ok())?;
    if let Some(listen) = cli.listen {
        config.proxy.listen = listen;
    }
    if let Some(listen) = cli.tls_listen {
        match &mut config.proxy.tls {
            Some(tls) => tls.listen = listen,
            None => anyhow::bail!("--tls-listen needs a [proxy.tls] section (cert and key)"),
        }
    }
    if let Some(threads) = cli.threads {
        config.proxy.threads = threads;
    }
    if let Some(url) = &cli.upstream {
        config.upstream.url = RedisUrl::parse(url).map_err(anyhow::Error::msg)?;
    }
    Ok(config)
}

/// [`resolve_config`], validated once, after the file, the environment and the command line
/// all had their say.
fn load_config(cli: &Cli) -> anyhow::Result<Validated> {
    Ok(app::validate(resolve_config(cli)?)?)
}

fn serve(cli: &Cli) -> anyhow::Result<()> {
    let validated = load_config(cli)?;
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
        let listeners = app::Listeners {
            resp: listener,
            tls: None,
            admin,
        };
        app::run_validated(validated, listeners, shutdown_signal()).await
    })
}

/// `cachet uninstall`: what it finds goes to stdout, one per line; the summary to stderr.
fn uninstall(cli: &Cli, dry_run: bool) -> anyhow::Result<()> {
    use cachet::uninstall::{Kind, Targets, run};
    use fred::interfaces::ClientLike;
    let config = resolve_config(cli)?;
    let targets = Targets::new(cachet::tags::index::DEFAULT_PREFIX, &config.events)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let upstream = cachet::upstream::Upstream::new(config.upstream.clone())?;
        let client = upstream.control().clone();
        // The control client keeps retrying a Redis that is down; a command line gives up.
        let address = config.upstream.url.address();
        tokio::time::timeout(std::time::Duration::from_secs(10), client.init())
            .await
            .map_err(|_| anyhow::anyhow!("Redis at {address} did not answer within 10 s"))?
            .with_context(|| format!("connecting to Redis at {address}"))?;
        let mut out = std::io::stdout().lock();
        let summary = run(&client, &targets, dry_run, |found| {
            use std::io::Write;
            // A closed stdout (`| head`) must not stop the removal half way.
            let _ = writeln!(out, "{found}");
        })
        .await;
        let _ = client.quit().await;
        let summary = summary?;
        if summary.cachet_clients > 0 {
            eprintln!(
                "cachet: warning: {} connection(s) named cachet:pool or cachet:aside are open: \
                 a cachet still running writes index keys again and reloads its library",
                summary.cachet_clients
            );
        }
        let counts: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let n = summary.counts.get(k).copied().unwrap_or(0);
                format!("{} {n}", k.plural())
            })
            .collect();
        let verb = if dry_run { "would remove" } else { "removed" };
        eprintln!(
            "cachet: {verb} from {}: {}",
            config.upstream.url,
            counts.join(", ")
        );
        Ok(())
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
