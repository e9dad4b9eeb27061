//! Short runs of the load generator's scenarios against the built server:
//! correctness (nothing lost, no errors), not speed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVER: &str = env!("CARGO_BIN_EXE_replication-server");
const LOADGEN: &str = env!("CARGO_BIN_EXE_replication-loadgen");

fn free_base_port(salt: u64) -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 16) ^ salt;
    loop {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // The three ZeroMQ ports and the admin endpoint, below Linux's
        // ephemeral range so no client connection takes one meanwhile.
        let base = 20_000 + 4 * ((seed >> 33) % 3_000) as u16;
        if (0..4).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

fn start(port: u16) -> Child {
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("loadgen-{port}"));
    let _ = std::fs::remove_dir_all(&data);
    let child = Command::new(SERVER)
        .args(["-p", &port.to_string(), "--bind", "127.0.0.1", "-l", "WARNING"])
        .arg("--data-dir")
        .arg(&data)
        .env("ADMIN_PASSWORD", "admin")
        .env_remove("SERVER_PASSWORD")
        .env_remove("ADMIN_ADDR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new(SERVER)
        .args(["-p", &port.to_string(), "health"])
        .env_remove("ADMIN_ADDR")
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "server never healthy");
    }
    child
}

fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let rest = &json[json.find(&key).unwrap_or_else(|| panic!("{name} in {json}")) + key.len()..];
    rest.split([',', '}'])
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

fn run(scenario: &str, extra: &[&str], salt: u64) -> String {
    let port = free_base_port(salt);
    let mut server = start(port);
    let out = Command::new(LOADGEN)
        .args([
            "--port",
            &port.to_string(),
            "--scenario",
            scenario,
            "--seconds",
            "1",
            "--json",
        ])
        .arg("--server-pid")
        .arg(server.id().to_string())
        .args(extra)
        .output()
        .unwrap();
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{scenario}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json.contains("\"errors\":[]"), "{scenario}: {json}");
    json
}

#[test]
fn the_ceiling_scenario_needs_no_server_and_loses_nothing() {
    let port = free_base_port(6);
    let out = Command::new(LOADGEN)
        .args(["--port", &port.to_string(), "--scenario", "ceiling", "--clients", "4"])
        .args(["--seconds", "1", "--rate", "500", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(field(&json, "sent") >= 300.0, "{json}");
    assert_eq!(field(&json, "delivered"), field(&json, "sent") * 3.0, "{json}");
}

#[test]
fn rate_scenario_delivers_everything() {
    let json = run("rate", &["--clients", "5", "--rate", "500"], 1);
    assert!(field(&json, "sent") >= 300.0, "{json}");
    assert_eq!(field(&json, "lost"), 0.0, "{json}");
    assert_eq!(field(&json, "delivered"), field(&json, "sent") * 4.0, "{json}");
}

#[test]
fn metadata_scenario_delivers_everything() {
    let json = run("metadata", &["--clients", "4"], 2);
    assert!(field(&json, "sent") > 0.0);
    assert_eq!(field(&json, "lost"), 0.0, "{json}");
}

#[test]
fn logins_and_logouts_during_a_stream_lose_nothing() {
    let json = run("churn", &["--clients", "4", "--rate", "500", "--churn", "50"], 3);
    assert_eq!(field(&json, "lost"), 0.0, "{json}");
}

#[test]
fn join_pulls_every_node() {
    let json = run("join", &["--nodes", "300"], 4);
    assert_eq!(field(&json, "delivered"), 300.0, "{json}");
}

#[test]
fn a_reader_that_stops_reading_does_not_cost_the_others() {
    let json = run("slow-reader", &["--clients", "5", "--rate", "500"], 5);
    assert_eq!(field(&json, "lost"), 0.0, "{json}");
    assert_eq!(field(&json, "delivered"), field(&json, "sent") * 3.0, "{json}");
}
