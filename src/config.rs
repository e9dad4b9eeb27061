//! Configuration: the Python server's command line plus environment
//! variables (and a `.env` file). Flags win over the environment.

use std::path::PathBuf;

use clap::Parser;

use crate::store::FsyncPolicy;

pub const DEFAULT_PORT: u16 = 5555;
/// The Docker deployments' default (the Python library's own is 2000 ms,
/// too short for artists on a VPN).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_ADMIN_PASSWORD: &str = "admin";
/// Image nodes carry whole files, so one message can be large; anything
/// bigger is refused by libzmq before it is buffered.
pub const DEFAULT_MAX_MESSAGE_SIZE: i64 = 256 * 1024 * 1024;
/// Below this even an Auth message would not fit.
pub const MIN_MAX_MESSAGE_SIZE: i64 = 4096;
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Seconds between automatic saves, as the Python deployment's guides say.
pub const DEFAULT_SAVE_INTERVAL_S: u64 = 120;
pub const DEFAULT_MAX_BACKUPS: usize = 10;
/// A save interval above a day is almost certainly a typo.
pub const MAX_SAVE_INTERVAL_S: u64 = 86_400;
pub const MAX_MAX_BACKUPS: usize = 10_000;
/// The shortest timeout that still lets a client answer a ping (clients
/// are pinged once a second).
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    pub const ACCEPTED: &'static str = "TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL";

    fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "TRACE" => LogLevel::Trace,
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARNING" | "WARN" => LogLevel::Warning,
            "ERROR" | "CRITICAL" => LogLevel::Error,
            _ => return None,
        })
    }

    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What follows PORT: command, data, heartbeat, then the admin endpoint.
pub const ADMIN_PORT_OFFSET: u16 = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Command port; data is `port + 1`, heartbeat `port + 2`.
    pub port: u16,
    pub timeout_ms: u64,
    pub admin_password: String,
    /// Empty means a public session.
    pub server_password: String,
    pub log_level: LogLevel,
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// The admin HTTP endpoint; None when disabled.
    pub admin_addr: Option<std::net::SocketAddr>,
    pub max_message_size: i64,
    /// Address the three sockets bind to.
    pub bind_address: String,
    pub data_dir: PathBuf,
    pub save_interval_s: u64,
    pub max_backups: usize,
    pub journal_fsync: FsyncPolicy,
    pub retained_keys: Vec<String>,
}

impl Config {
    pub fn is_private(&self) -> bool {
        !self.server_password.is_empty()
    }

    pub fn uses_default_admin_password(&self) -> bool {
        self.admin_password == DEFAULT_ADMIN_PASSWORD
    }

    /// Where a local admin command reaches the admin endpoint: the same
    /// address, or loopback when it listens on every interface.
    pub fn admin_target(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr.map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(match a.ip() {
                    std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            a
        })
    }

    pub fn data_port(&self) -> u16 {
        self.port + 1
    }

    pub fn heartbeat_port(&self) -> u16 {
        self.port + 2
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid {name} {value:?}: expected {accepted}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub accepted: String,
}

/// Flags of the Python server (`python -m replication.server`), each also
/// readable from the environment.
#[derive(Debug, Parser, Default)]
#[command(
    name = "replication-server",
    version,
    about = "Drop-in server for Blender Multi-User (replication 0.9.10)"
)]
pub struct ServeArgs {
    /// Command port; data uses PORT+1, heartbeat PORT+2
    #[arg(short = 'p', long = "port", env = "PORT")]
    pub port: Option<String>,
    /// Milliseconds of heartbeat silence before a client is dropped
    #[arg(short = 't', long = "timeout", env = "TIMEOUT")]
    pub timeout: Option<String>,
    /// Password of the session's admins (-apwd)
    #[arg(long = "admin-password", env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Password every client needs; empty for a public session (-spwd)
    #[arg(long = "server-password", env = "SERVER_PASSWORD", hide_env_values = true)]
    pub server_password: Option<String>,
    /// TRACE, DEBUG, INFO, WARNING, ERROR or CRITICAL
    #[arg(short = 'l', long = "log-level", env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Also write the log to this file (-lf)
    #[arg(long = "log-file", env = "LOG_FILE")]
    pub log_file: Option<String>,
    /// Log lines as text or json
    #[arg(long = "log-format", env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Admin HTTP endpoint, HOST:PORT (default 127.0.0.1:PORT+3; empty or "off" disables it)
    #[arg(long = "admin-addr", env = "ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Accepted for compatibility with the Python server; no effect
    #[arg(long = "attached")]
    pub attached: bool,
    /// Largest message accepted, in bytes
    #[arg(long = "max-message-size", env = "MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<String>,
    /// Address to bind the three ports to
    #[arg(long = "bind", env = "BIND_ADDRESS")]
    pub bind_address: Option<String>,
    /// Folder of the snapshot, journal and backups
    #[arg(long = "data-dir", env = "DATA_DIR")]
    pub data_dir: Option<String>,
    /// Seconds between automatic saves
    #[arg(long = "save-interval", env = "SAVE_INTERVAL")]
    pub save_interval: Option<String>,
    /// Snapshots kept in DATA_DIR/backups
    #[arg(long = "max-backups", env = "MAX_BACKUPS")]
    pub max_backups: Option<String>,
    /// When the journal reaches the disk: always, everysec or off
    #[arg(long = "journal-fsync", env = "JOURNAL_FSYNC")]
    pub journal_fsync: Option<String>,
    /// Metadata keys kept per user across leaves and restarts (comma separated)
    #[arg(long = "retained-metadata-keys", env = "RETAINED_METADATA_KEYS")]
    pub retained_keys: Option<String>,
}

/// The Python server's flags that clap cannot express (multi-letter single
/// dash), rewritten to their long forms.
const LEGACY_FLAGS: [(&str, &str); 3] = [
    ("-apwd", "--admin-password"),
    ("-spwd", "--server-password"),
    ("-lf", "--log-file"),
];

pub fn normalize_legacy_flags<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    args.into_iter()
        .map(|arg| {
            for (short, long) in LEGACY_FLAGS {
                if arg == short {
                    return long.to_string();
                }
                if let Some(rest) = arg.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                    return format!("{long}={rest}");
                }
            }
            arg
        })
        .collect()
}

fn invalid(name: &'static str, value: &str, accepted: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        value: value.to_string(),
        accepted: accepted.into(),
    }
}

impl ServeArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let port = match self.port.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_PORT,
            Some(s) => s
                .parse::<u16>()
                .ok()
                .filter(|p| (1..=u16::MAX - 2).contains(p))
                .ok_or_else(|| {
                    invalid(
                        "PORT (-p/--port)",
                        s,
                        "a port number from 1 to 65533 (the server uses PORT..PORT+2)",
                    )
                })?,
        };
        let timeout_ms = match self.timeout.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_TIMEOUT_MS,
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|t| (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(t))
                .ok_or_else(|| {
                    invalid(
                        "TIMEOUT (-t/--timeout)",
                        s,
                        format!("milliseconds from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}"),
                    )
                })?,
        };
        let admin_password = match self.admin_password {
            None => DEFAULT_ADMIN_PASSWORD.to_string(),
            Some(s) if s.is_empty() => {
                return Err(invalid(
                    "ADMIN_PASSWORD (-apwd/--admin-password)",
                    "",
                    "a non-empty password",
                ));
            }
            Some(s) => s,
        };
        let log_level = match self.log_level.as_deref() {
            None | Some("") => LogLevel::Info,
            Some(s) => {
                LogLevel::parse(s).ok_or_else(|| invalid("LOG_LEVEL (-l/--log-level)", s, LogLevel::ACCEPTED))?
            }
        };
        let log_format = match self.log_format.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
            None => LogFormat::Text,
            Some(s) if s.is_empty() || s == "text" => LogFormat::Text,
            Some(s) if s == "json" => LogFormat::Json,
            Some(s) => return Err(invalid("LOG_FORMAT (--log-format)", &s, "text or json")),
        };
        let admin_addr = match self.admin_addr.as_deref().map(str::trim) {
            None => Some(std::net::SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                port.checked_add(ADMIN_PORT_OFFSET).ok_or_else(|| {
                    invalid(
                        "PORT (-p/--port)",
                        &port.to_string(),
                        "a port number from 1 to 65532 while ADMIN_ADDR uses PORT+3 (or set ADMIN_ADDR)",
                    )
                })?,
            ))),
            Some("") | Some("off") => None,
            Some(s) => Some(s.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid(
                    "ADMIN_ADDR (--admin-addr)",
                    s,
                    "HOST:PORT such as 127.0.0.1:5558, or empty to disable the admin endpoint",
                )
            })?),
        };
        let max_message_size = match self.max_message_size.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_MAX_MESSAGE_SIZE,
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= MIN_MAX_MESSAGE_SIZE)
                .ok_or_else(|| {
                    invalid(
                        "MAX_MESSAGE_SIZE (--max-message-size)",
                        s,
                        format!("bytes, at least {MIN_MAX_MESSAGE_SIZE}"),
                    )
                })?,
        };
        let bind_address = match self.bind_address.as_deref().map(str::trim) {
            None | Some("") => "0.0.0.0".to_string(),
            Some(s) if s.parse::<std::net::IpAddr>().is_ok() || s == "*" => s.to_string(),
            Some(s) => {
                return Err(invalid(
                    "BIND_ADDRESS (--bind)",
                    s,
                    "an IP address such as 0.0.0.0 or 127.0.0.1",
                ));
            }
        };
        let save_interval_s = match self.save_interval.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_SAVE_INTERVAL_S,
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_SAVE_INTERVAL_S).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "SAVE_INTERVAL (--save-interval)",
                        s,
                        format!("seconds from 1 to {MAX_SAVE_INTERVAL_S}"),
                    )
                })?,
        };
        let max_backups = match self.max_backups.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_MAX_BACKUPS,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_MAX_BACKUPS)
                .ok_or_else(|| {
                    invalid(
                        "MAX_BACKUPS (--max-backups)",
                        s,
                        format!("a count from 0 to {MAX_MAX_BACKUPS}"),
                    )
                })?,
        };
        let journal_fsync = match self.journal_fsync.as_deref().map(str::trim) {
            None | Some("") => FsyncPolicy::EverySec,
            Some(s) => FsyncPolicy::parse(s)
                .ok_or_else(|| invalid("JOURNAL_FSYNC (--journal-fsync)", s, FsyncPolicy::ACCEPTED))?,
        };
        let retained_keys = match self.retained_keys.as_deref() {
            None => crate::session::DEFAULT_RETAINED_KEYS
                .iter()
                .map(|k| k.to_string())
                .collect(),
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        // An empty variable (Docker's `ENV X=`) means the default, here and below.
        let data_dir = PathBuf::from(
            self.data_dir
                .filter(|p| !p.is_empty())
                .as_deref()
                .unwrap_or(DEFAULT_DATA_DIR),
        );
        Ok(Config {
            data_dir,
            save_interval_s,
            max_backups,
            journal_fsync,
            retained_keys,
            port,
            timeout_ms,
            admin_password,
            server_password: self.server_password.unwrap_or_default(),
            log_level,
            log_file: self.log_file.filter(|p| !p.is_empty()).map(PathBuf::from),
            log_format,
            admin_addr,
            max_message_size,
            bind_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let argv = normalize_legacy_flags(
            std::iter::once("replication-server")
                .chain(args.iter().copied())
                .map(String::from),
        );
        ServeArgs::try_parse_from(argv).expect("flags parse").into_config()
    }

    #[test]
    fn legacy_flags_are_rewritten() {
        let argv = normalize_legacy_flags(["-apwd", "x", "-spwd=y", "-lf", "f"].map(String::from));
        assert_eq!(
            argv,
            ["--admin-password", "x", "--server-password=y", "--log-file", "f"]
        );
    }

    #[test]
    fn python_command_line_is_accepted() {
        let args = ServeArgs {
            port: Some("6000".into()),
            timeout: Some("5000".into()),
            admin_password: Some("secret".into()),
            server_password: Some("pw".into()),
            log_level: Some("debug".into()),
            attached: true,
            ..Default::default()
        };
        let c = args.into_config().unwrap();
        assert_eq!((c.port, c.timeout_ms, c.log_level), (6000, 5000, LogLevel::Debug));
        assert!(c.is_private());
        assert!(!c.uses_default_admin_password());
    }

    #[test]
    fn defaults() {
        let c = ServeArgs::default().into_config().unwrap();
        assert_eq!(c.port, 5555);
        assert_eq!(c.timeout_ms, 10_000);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(
            (c.save_interval_s, c.max_backups, c.journal_fsync),
            (120, 10, FsyncPolicy::EverySec)
        );
        assert_eq!(c.retained_keys, ["tasks", "chat_messages"]);
        assert!(c.uses_default_admin_password());
        assert!(!c.is_private());
        assert_eq!(c.admin_addr, Some("127.0.0.1:5558".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn admin_address_and_log_format() {
        let c = parse(&["-p", "7000", "--admin-addr", "0.0.0.0:9000", "--log-format", "JSON"]).unwrap();
        assert_eq!(c.admin_addr, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(c.admin_target(), Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            parse(&["-p", "7000"]).unwrap().admin_addr,
            Some("127.0.0.1:7003".parse().unwrap())
        );
        assert_eq!(parse(&["--admin-addr", ""]).unwrap().admin_addr, None);
        assert_eq!(parse(&["--admin-addr", "off"]).unwrap().admin_addr, None);
        let e = parse(&["--admin-addr", "localhost"]).unwrap_err();
        assert!(e.to_string().starts_with("invalid ADMIN_ADDR"), "{e}");
        let e = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(e.to_string().contains("text or json"), "{e}");
        assert!(parse(&["-p", "65533"]).is_err(), "PORT+3 would not exist");
        assert!(parse(&["-p", "65533", "--admin-addr", ""]).is_ok());
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = ServeArgs {
            port: Some("70000".into()),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid PORT (-p/--port) \"70000\""), "{e}");
        let e = ServeArgs {
            log_level: Some("LOUD".into()),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("CRITICAL"), "{e}");
        let e = ServeArgs {
            timeout: Some("ten".into()),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(e.to_string().contains("TIMEOUT"), "{e}");
    }

    #[test]
    fn flag_parsing_end_to_end() {
        let c = parse(&["-p", "7000", "-apwd", "pw", "--attached"]).unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(c.admin_password, "pw");
    }
}
