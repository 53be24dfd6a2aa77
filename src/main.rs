//! The `swarmstate` binary: `serve` runs the service, `openapi` prints its OpenAPI document.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swarmstate::config::{CliOverrides, Config};

/// mimalloc: the service allocates many small, short-lived buffers per request; glibc malloc
/// spent ~20% of CPU under load (perf), mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "swarmstate",
    version,
    about = "Coordination state for multi-agent systems, served from Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (with its own redis-server when no Redis URL is configured).
    #[command(after_help = swarmstate::config::settings_help())]
    Serve {
        /// TOML configuration file (lower priority than env and flags).
        #[arg(long, env = "SWARMSTATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: CliOverrides,
    },
    /// Print the OpenAPI 3.1 document.
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => match serde_json::to_string_pretty(&swarmstate::http::openapi()) {
            Ok(s) => {
                // A closed pipe (`swarmstate openapi | head`) is not an error worth a panic.
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(s.as_bytes()).and_then(|_| out.write_all(b"\n"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, overrides } => {
            let cfg = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&cfg);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(swarmstate::app::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(cfg: &Config) {
    // fred logs every dropped connection at WARN ("Broadcasting error"), also when the service
    // closes its own at shutdown; the service reports Redis trouble itself (503s, reconnects),
    // so fred speaks at ERROR unless the filter names it.
    let directives = if cfg.log.contains("fred") {
        cfg.log.clone()
    } else {
        format!("{},fred=error", cfg.log)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fred=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal, not for files, journald or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
