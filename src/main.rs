use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use replication_server::config::{Config, ServeArgs, normalize_legacy_flags};
use replication_server::{health, server};

/// How long `health` waits for the server's answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(
    name = "replication-server",
    version,
    about = "Drop-in server for Blender Multi-User (replication 0.9.10)"
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Ask the server on PORT for its info; exit 0 only on a valid answer
    Health {
        /// Host to ask
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
}

fn init_logging(config: &Config) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::new(config.log_level.as_filter());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let file = match &config.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open LOG_FILE {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_target(false),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
    Ok(())
}

fn main() -> ExitCode {
    // A missing .env is normal; a broken one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("replication-server: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(normalize_legacy_flags(std::env::args()));
    let config = match cli.serve.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replication-server: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Sub::Health { host }) => match health::request_server_info(&host, config.port, HEALTH_TIMEOUT) {
            Ok(info) => {
                println!(
                    "healthy: {host}:{} answers, version {}, {}",
                    config.port,
                    info.version,
                    if info.private { "private" } else { "public" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        None => {
            if let Err(e) = init_logging(&config) {
                eprintln!("replication-server: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("replication-server: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("replication-server: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
