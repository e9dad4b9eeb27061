use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use replication_server::admin::{self, client, client::ClientError};
use replication_server::config::{Config, LogFormat, ServeArgs, normalize_legacy_flags};
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
    /// Who is online, with admin flag and latency (asks the running server)
    Users {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a user from the running server
    Kick {
        /// The user name, as listed by `users`
        name: String,
    },
    /// Make the running server write a snapshot now; returns once it is on disk
    Save,
    /// The running server's health: state, users, nodes, last save (exit 1 when unhealthy)
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Write the session as a replication session dump (.db): from the running
    /// server when one answers, else from DATA_DIR
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

/// Failure of a subcommand: its message and exit code.
struct Failure(String, u8);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure(e.to_string(), e.exit_code())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure(e, 1)
    }
}

fn admin_target(config: &Config) -> Result<std::net::SocketAddr, Failure> {
    config.admin_target().ok_or_else(|| {
        Failure(
            "the admin endpoint is disabled (ADMIN_ADDR is empty); set ADMIN_ADDR on the server and here".into(),
            2,
        )
    })
}

/// A JSON request whose 2xx answer is returned; anything else is an error.
fn ask(config: &Config, method: &str, path: &str, timeout: Duration) -> Result<serde_json::Value, Failure> {
    let addr = admin_target(config)?;
    let (code, json) = client::call_json(addr, method, path, &config.admin_password, timeout)?;
    if (200..300).contains(&code) {
        Ok(json)
    } else {
        Err(client::refusal(code, &json).into())
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(json).map_err(|e| Failure(format!("unexpected answer from the server: {e}"), 1))
}

fn users(config: &Config, json: bool) -> Result<String, Failure> {
    let answer = ask(config, "GET", "/users", client::QUICK_TIMEOUT)?;
    if json {
        return Ok(answer.to_string());
    }
    let users: Vec<admin::UserInfo> = parse(answer.get("users").cloned().unwrap_or_default())?;
    Ok(admin::users_table(&users))
}

fn kick(config: &Config, name: &str) -> Result<String, Failure> {
    let path = format!("/users/{}/kick", client::path_segment(name));
    ask(config, "POST", &path, client::QUICK_TIMEOUT)?;
    Ok(format!("kicked {name}"))
}

fn save(config: &Config) -> Result<String, Failure> {
    let report: admin::SaveReport = parse(ask(config, "POST", "/save", client::LONG_TIMEOUT)?)?;
    Ok(admin::save_text(&report))
}

/// `GET /health`: whether the server calls itself healthy, and its report
/// (a 503 still carries one).
fn fetch_health(config: &Config, addr: std::net::SocketAddr) -> Result<(bool, serde_json::Value), ClientError> {
    let (code, json) = client::call_json(addr, "GET", "/health", &config.admin_password, client::QUICK_TIMEOUT)?;
    match code {
        200 => Ok((true, json)),
        503 => Ok((false, json)),
        _ => Err(client::refusal(code, &json)),
    }
}

fn status(config: &Config, json: bool) -> Result<String, Failure> {
    let (healthy, answer) = fetch_health(config, admin_target(config)?)?;
    let text = if json {
        answer.to_string()
    } else {
        admin::health_text(&parse::<admin::Health>(answer)?)
    };
    if healthy { Ok(text) } else { Err(Failure(text, 1)) }
}

/// The protocol answers; on this machine, the admin endpoint (when there
/// is one) must also report the saves working, so a container whose disk
/// filled up turns unhealthy.
fn health_check(config: &Config, host: &str) -> Result<String, String> {
    let info = health::request_server_info(host, config.port, HEALTH_TIMEOUT).map_err(|e| e.to_string())?;
    let mut msg = format!(
        "healthy: {host}:{} answers, version {}, {}",
        config.port,
        info.version,
        if info.private { "private" } else { "public" }
    );
    let local = matches!(host, "127.0.0.1" | "localhost" | "::1");
    if let (true, Some(addr)) = (local, config.admin_target()) {
        match fetch_health(config, addr).map_err(|e| e.to_string())? {
            (true, _) => msg.push_str(", saves working"),
            (false, json) => {
                let h: admin::Health = serde_json::from_value(json).map_err(|e| e.to_string())?;
                return Err(admin::health_text(&h));
            }
        }
    }
    Ok(msg)
}

/// Export from the running server, or from DATA_DIR when none answers.
fn export(config: &Config, file: &std::path::Path) -> Result<String, Failure> {
    let Some(addr) = config.admin_target() else {
        return export_from_dir(config, file).map_err(Failure::from);
    };
    let tmp = file.with_extension("db.partial");
    let mut out = std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let result = client::call_into(
        addr,
        "GET",
        "/export",
        &config.admin_password,
        client::LONG_TIMEOUT,
        &mut out,
    );
    drop(out);
    let answer = match result {
        Ok(r) if r.status == 200 => {
            std::fs::rename(&tmp, file).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            return Ok(format!(
                "exported the running server's session to {} ({size} bytes)",
                file.display()
            ));
        }
        Ok(r) => {
            let json = serde_json::from_slice(&r.body).unwrap_or_default();
            Err(client::refusal(r.status, &json).into())
        }
        Err(ClientError::Unreachable(..)) => export_from_dir(config, file)
            .map(|msg| format!("no server answers on {addr}; {msg}"))
            .map_err(Failure::from),
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_file(&tmp);
    answer
}

fn export_from_dir(config: &Config, file: &std::path::Path) -> Result<String, String> {
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
        if let Ok(Some(generation)) = store::journal::read_generation(&path) {
            covered = covered.max(generation);
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

/// One log output in the configured format.
fn log_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_target(false);
    match format {
        LogFormat::Text => Box::new(layer.with_ansi(ansi)),
        LogFormat::Json => Box::new(layer.json().flatten_event(true).with_current_span(false)),
    }
}

fn init_logging(config: &Config) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::new(config.log_level.as_filter());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = log_layer(config.log_format, std::io::stderr, ansi);
    let file = match &config.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open LOG_FILE {}: {e}", path.display()))?;
            Some(log_layer(config.log_format, std::sync::Mutex::new(f), false))
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

fn report(result: Result<String, Failure>) -> ExitCode {
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(Failure(e, code)) => {
            eprintln!("replication-server: {e}");
            ExitCode::from(code)
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
        Some(Sub::Health { host }) => match health_check(&config, &host) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Sub::Users { json }) => report(users(&config, json)),
        Some(Sub::Kick { name }) => report(kick(&config, &name)),
        Some(Sub::Save) => report(save(&config)),
        Some(Sub::Status { json }) => report(status(&config, json)),
        Some(Sub::Export { file }) => report(export(&config, &file)),
        Some(Sub::Import { file }) => report(import(&config, &file).map_err(Failure::from)),
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
