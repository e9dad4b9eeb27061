//! The binary as an admin starts it: configuration errors, the health
//! subcommand, and a clean stop on SIGTERM.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_replication-server");

fn free_base_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut seed = u64::from(std::process::id()) ^ u64::from(nanos);
    for _ in 0..200 {
        seed = seed
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Four ports: the three of the protocol and the admin endpoint's
        // (PORT+3). Multiples of four, so two tests' ranges never overlap;
        // below Linux's ephemeral range, so no client connection takes one.
        let base = 20_000 + 4 * ((seed >> 33) % 3_000) as u16;
        let listeners: Vec<_> = (0..4)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if listeners.len() == 4 {
            return base;
        }
    }
    panic!("no free ports");
}

fn clean_env(cmd: &mut Command) -> &mut Command {
    for var in [
        "PORT",
        "TIMEOUT",
        "ADMIN_PASSWORD",
        "SERVER_PASSWORD",
        "LOG_LEVEL",
        "LOG_FILE",
        "MAX_MESSAGE_SIZE",
        "BIND_ADDRESS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(env!("CARGO_TARGET_TMPDIR"))
}

fn start(port: u16, extra: &[&str]) -> Child {
    clean_env(&mut Command::new(BIN))
        .args(["-p", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--data-dir")
        .arg(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{port}")))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts")
}

fn health(port: u16) -> std::process::Output {
    clean_env(&mut Command::new(BIN))
        .args(["-p", &port.to_string(), "health"])
        .output()
        .unwrap()
}

fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if health(port).status.success() {
            return;
        }
    }
    panic!("server on {port} never became healthy");
}

#[test]
fn invalid_values_stop_the_start_with_one_line() {
    for (flag, value, name) in [
        ("-p", "99999", "PORT"),
        ("-t", "soon", "TIMEOUT"),
        ("-l", "LOUD", "LOG_LEVEL"),
        ("--max-message-size", "12", "MAX_MESSAGE_SIZE"),
    ] {
        let out = clean_env(&mut Command::new(BIN)).args([flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name) && stderr.contains(value), "{stderr}");
    }
    let out = clean_env(&mut Command::new(BIN)).env("TIMEOUT", "-5").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("TIMEOUT"));
}

#[test]
fn health_fails_without_a_server() {
    let out = health(free_base_port());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

#[test]
fn python_style_flags_start_a_server_that_stops_on_sigterm() {
    let port = free_base_port();
    let mut child = start(
        port,
        &[
            "-apwd",
            "pw",
            "-spwd",
            "secret",
            "-t",
            "5000",
            "-l",
            "DEBUG",
            "--attached",
        ],
    );
    wait_healthy(port);
    let out = health(port);
    assert!(String::from_utf8_lossy(&out.stdout).contains("private"), "{out:?}");
    // What `docker stop` and systemd send.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("replication server listening"), "{log}");
    assert!(log.contains("private"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("ADMIN_PASSWORD is the default"), "{log}");
}

#[test]
fn default_admin_password_is_warned_about_and_env_file_is_read() {
    let port = free_base_port();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("envfile-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        format!("PORT={port}\nBIND_ADDRESS=127.0.0.1\nSERVER_PASSWORD=\n"),
    )
    .unwrap();
    let mut child = clean_env(&mut Command::new(BIN))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port);
    assert!(String::from_utf8_lossy(&health(port).stdout).contains("public"));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("ADMIN_PASSWORD is the default"), "{log}");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let port = free_base_port();
    let _busy = TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data-busy-{port}"));
    let out = clean_env(&mut Command::new(BIN))
        .args(["-p", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind the data port"), "{stderr}");
}

#[test]
fn empty_variables_mean_defaults() {
    // Docker images set `ENV LOG_FILE=` and `ENV SERVER_PASSWORD=`; the
    // health check runs with that environment.
    let out = clean_env(&mut Command::new(BIN))
        .env("LOG_FILE", "")
        .env("SERVER_PASSWORD", "")
        .env("DATA_DIR", "")
        .env("PORT", free_base_port().to_string())
        .arg("health")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unhealthy"), "{stderr}");
    assert!(!stderr.contains("a value is required"), "{stderr}");
}
