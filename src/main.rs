//! The `swarmstate` binary: `serve` runs the service, `openapi` prints its OpenAPI document.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swarmstate::config::{CliOverrides, Config};
use swarmstate::domain::auth::{Permission, TokenEntry};

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
    /// GET /healthz of a running service and exit 0 when it answers 200, else 1 (for a
    /// container HEALTHCHECK: slim images have no curl).
    Healthcheck {
        /// The service's address; default: SWARMSTATE_LISTEN's port on 127.0.0.1.
        #[arg(long)]
        addr: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Bearer tokens for the tokens file.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Backup files (the format of README "Backups").
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Capture namespaces and queues (every one when neither --namespaces nor --queues is
    /// given) from the configured Redis into one backup file, each at one moment while writers
    /// go on; encrypted when a backup key is set (SWARMSTATE_BACKUP_KEY) unless --no-encrypt.
    /// Prints the manifest.
    Create {
        #[arg(long)]
        file: PathBuf,
        /// Comma-separated namespace (and partition) names.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Comma-separated queue names.
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// Write a plain (compressed, checksummed, not encrypted) file even when a key is set.
        #[arg(long)]
        no_encrypt: bool,
        /// TOML configuration file (lower priority than env and flags).
        #[arg(long, env = "SWARMSTATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: CliOverrides,
    },
    /// Restore a backup file into the configured Redis: the whole file is checked first (a
    /// damaged, truncated or wrong-key file exits 1 with its code and writes nothing). Prints
    /// the summary {restored, deleted, skipped, revision, namespaces}.
    Restore {
        #[arg(long)]
        file: PathBuf,
        /// merge: write entries that are absent or whose current life is older; replace: make
        /// each namespace exactly the backup.
        #[arg(long)]
        mode: String,
        /// Comma-separated namespaces of the file to restore (default, with no --queues: all).
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Comma-separated queues of the file to restore (default, with no --namespaces: all).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// Report what would change, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Earlier keys that may have encrypted it (repeat, or comma-separated).
        #[arg(long, value_delimiter = ',')]
        old_key: Vec<String>,
        /// TOML configuration file (lower priority than env and flags).
        #[arg(long, env = "SWARMSTATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: CliOverrides,
    },
    /// Read a backup file whole and check it (header, every chunk, the content's SHA-256):
    /// exit 0 and print its manifest, or exit 1 with the problem's code (backup_tampered,
    /// backup_truncated, backup_key_mismatch, backup_key_missing, backup_invalid). Needs no Redis.
    Verify {
        #[arg(long)]
        file: PathBuf,
        /// The key of encrypted files: 64 hex digits or base64 of 32 bytes.
        #[arg(long, env = "SWARMSTATE_BACKUP_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Earlier keys that may have encrypted it (repeat, or comma-separated).
        #[arg(long, value_delimiter = ',')]
        old_key: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token (once: only its SHA-256 is kept) on the first line, then a
    /// blank line and the `[[token]]` entry to add to the tokens file.
    New {
        /// Shown in logs and metrics.
        #[arg(long)]
        name: String,
        /// Comma-separated globs over namespace and partition names.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Comma-separated globs over queue names.
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// Comma-separated globs over pub/sub channels.
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// read | write | admin
        #[arg(long, default_value = "read")]
        permission: String,
        /// Request budget per second (burst twice that).
        #[arg(long)]
        rate_per_sec: Option<u32>,
        /// Comma-separated globs of the agent ids the token may act as.
        #[arg(long, value_delimiter = ',')]
        agents: Option<Vec<String>>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Backup {
            command: BackupCommand::Verify { file, key, old_key },
        } => backup_verify(&file, key.iter().chain(&old_key)),
        Command::Backup {
            command:
                BackupCommand::Create {
                    file,
                    namespaces,
                    queues,
                    no_encrypt,
                    config,
                    overrides,
                },
        } => backup_online(config, &overrides, &[], |ops, keys| async move {
            let key = if no_encrypt { None } else { keys.first() };
            let done = ops
                .backup_capture(&selection(namespaces, queues), &file, key, &Default::default())
                .await?;
            let mut v = serde_json::to_value(&done.manifest).unwrap_or_default();
            v["size_bytes"] = done.size_bytes.into();
            v["sha256"] = done.sha256.into();
            v["encrypted"] = key.is_some().into();
            Ok(v)
        }),
        Command::Backup {
            command:
                BackupCommand::Restore {
                    file,
                    mode,
                    namespaces,
                    queues,
                    dry_run,
                    old_key,
                    config,
                    overrides,
                },
        } => {
            use swarmstate::store::backup::RestoreMode;
            let mode = match mode.as_str() {
                "merge" => RestoreMode::Merge,
                "replace" => RestoreMode::Replace,
                other => {
                    eprintln!("error: --mode must be merge or replace (not `{other}`)");
                    return ExitCode::from(2);
                }
            };
            backup_online(config, &overrides, &old_key, |ops, keys| async move {
                let caller = swarmstate::domain::auth::Caller::Open;
                let s = ops
                    .backup_restore(
                        &caller,
                        &file,
                        &keys,
                        mode,
                        &selection(namespaces, queues),
                        dry_run,
                    )
                    .await?;
                Ok(serde_json::to_value(&s).unwrap_or_default())
            })
        }
        Command::Healthcheck { addr, timeout_ms } => {
            let addr = addr.unwrap_or_else(|| {
                let listen = std::env::var("SWARMSTATE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
                let port = listen.rsplit(':').next().unwrap_or("8080").to_string();
                format!("127.0.0.1:{port}")
            });
            match healthcheck(&addr, std::time::Duration::from_millis(timeout_ms)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
        Command::Token {
            command:
                TokenCommand::New {
                    name,
                    namespaces,
                    queues,
                    channels,
                    permission,
                    rate_per_sec,
                    agents,
                },
        } => {
            let permission = match permission.as_str() {
                "read" => Permission::Read,
                "write" => Permission::Write,
                "admin" => Permission::Admin,
                other => {
                    eprintln!("error: --permission must be read, write or admin (not `{other}`)");
                    return ExitCode::from(2);
                }
            };
            let entry = TokenEntry {
                name,
                sha256: String::new(),
                namespaces,
                queues,
                channels,
                permission,
                rate_per_sec,
                agents,
            };
            match swarmstate::domain::auth::new_token(entry) {
                Ok((secret, entry)) => {
                    println!("{secret}\n\n{entry}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config, overrides } => {
            let cfg = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(why) = swarmstate::config::insecure_listen(&cfg) {
                eprintln!("error: {why}");
                return ExitCode::from(2);
            }
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

/// One `GET /healthz` over HTTP/1.1: Ok when the status line says 200.
fn healthcheck(addr: &str, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 || head.len() > 4096 {
            return Err(format!("{addr}: no HTTP status line"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{addr}: {line}")),
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

/// `swarmstate backup create|restore`: connect, run `f` with the backup key (first) and the
/// old keys, print its JSON answer; exit 1 with the problem's code on failure, 2 on bad input.
fn backup_online<F, Fut>(
    config: Option<PathBuf>,
    overrides: &CliOverrides,
    old_keys: &[String],
    f: F,
) -> ExitCode
where
    F: FnOnce(std::sync::Arc<swarmstate::ops::Ops>, Vec<swarmstate::domain::backup::BackupKey>) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, swarmstate::error::ApiError>>,
{
    use swarmstate::domain::backup::BackupKey;
    let cfg = match Config::load(config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut keys = Vec::new();
    for k in cfg.backup_key.iter().chain(old_keys) {
        match BackupKey::parse(k) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let (ops, _stop) = match swarmstate::app::connect_ops(cfg).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let out = f(ops.clone(), keys).await;
        ops.store().close().await;
        match out {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {}", e.code.as_str(), e.detail);
                ExitCode::FAILURE
            }
        }
    })
}

/// What --namespaces and --queues name: everything when neither is given.
fn selection(namespaces: Vec<String>, queues: Vec<String>) -> swarmstate::ops::backup::Selection {
    if namespaces.is_empty() && queues.is_empty() {
        return swarmstate::ops::backup::Selection::all();
    }
    swarmstate::ops::backup::Selection {
        namespaces: Some(namespaces),
        queues: Some(queues),
    }
}

/// `swarmstate backup verify`.
fn backup_verify<'a>(file: &std::path::Path, keys: impl Iterator<Item = &'a String>) -> ExitCode {
    use swarmstate::domain::backup::{BackupKey, Reader};
    let mut parsed = Vec::new();
    for k in keys {
        match BackupKey::parse(k) {
            Ok(k) => parsed.push(k),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let input = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let check = || -> Result<(serde_json::Value, u64), swarmstate::domain::backup::BackupError> {
        let mut r = Reader::open(input, &parsed)?;
        let manifest = r
            .next_line()?
            .and_then(|l| serde_json::from_slice::<serde_json::Value>(&l).ok())
            .unwrap_or_default();
        while r.next_line()?.is_some() {}
        Ok((manifest, r.lines_read()))
    };
    match check() {
        Ok((manifest, lines)) => {
            println!("ok: {} content lines, SHA-256 and every chunk checked", lines);
            println!("{}", serde_json::to_string_pretty(&manifest).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}
