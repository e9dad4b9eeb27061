use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use replication_server::config::{Config, ServeArgs, normalize_legacy_flags};
use replication_server::{health, server, store};

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
    /// Write the session of DATA_DIR as a replication session dump (.db)
    Export {
        /// Where to write the dump
        file: std::path::PathBuf,
    },
    /// Replace the session of DATA_DIR with a replication session dump (.db)
    Import {
        /// The dump to read
        file: std::path::PathBuf,
    },
}

fn export(config: &Config, file: &std::path::Path) -> Result<String, String> {
    let mut session = replication_server::session::SessionState::new(replication_server::session::SessionConfig::new(
        &config.admin_password,
        &config.server_password,
    ));
    let image =
        replication_server::recovery::image_of_dir(&config.data_dir, &mut session).map_err(|e| e.to_string())?;
    let bytes = store::dump::encode(&image).map_err(|e| e.to_string())?;
    store::write_file_atomic(file, &bytes).map_err(|e| e.to_string())?;
    Ok(format!(
        "exported {} nodes from {} to {}",
        image.nodes.len(),
        config.data_dir.display(),
        file.display()
    ))
}

fn import(config: &Config, file: &std::path::Path) -> Result<String, String> {
    if store::DataDir::is_locked(&config.data_dir) {
        return Err(format!(
            "a server is running on {}: stop it first, import replaces its session",
            config.data_dir.display()
        ));
    }
    let gz = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut image = store::dump::decode(file, &gz).map_err(|e| e.to_string())?;
    let dir = store::DataDir::open(&config.data_dir).map_err(|e| e.to_string())?;
    // The imported session replaces whatever the journals hold.
    let mut covered = 0;
    for path in [dir.journal(), dir.prev_journal()] {
        if let Ok(Some(r)) = store::journal::read(&path) {
            covered = covered.max(r.generation);
        }
    }
    image.journal_generation = covered;
    store::snapshot::write_atomic(&dir.snapshot(), &image).map_err(|e| e.to_string())?;
    for path in [dir.journal(), dir.prev_journal()] {
        let _ = std::fs::remove_file(path);
    }
    Ok(format!(
        "imported {} nodes from {} into {}",
        image.nodes.len(),
        file.display(),
        config.data_dir.display()
    ))
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

fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replication-server: {e}");
            ExitCode::FAILURE
        }
    }
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
        Some(Sub::Export { file }) => report(export(&config, &file)),
        Some(Sub::Import { file }) => report(import(&config, &file)),
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
