//! The session task: receives decoded messages from the socket threads,
//! runs them through the session state and hands the replies back.

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::net::{self, Inbound, NetConfig, NetError, Network};
use crate::session::{Outgoing, SessionConfig, SessionState};
use crate::shutdown::Shutdown;

/// Events handled before the replies are flushed to the socket threads;
/// batching saves wake-ups under load without delaying a lone message.
const EVENT_BATCH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

fn dispatch(session: &mut SessionState, net: &mut Network) {
    for out in session.drain_out() {
        match out {
            Outgoing::Send { channel, to, frames } => net.outbox(channel).send(to, frames),
            Outgoing::Admit(peer) => net.admit(&peer),
            Outgoing::Evict(peer) => net.evict(&peer),
        }
    }
    net.flush();
}

fn handle(session: &mut SessionState, event: Inbound) {
    match event {
        Inbound::Command { peer, command } => session.handle_command(peer, command),
        Inbound::Update { peer, update, frames } => session.handle_update(peer, *update, frames),
        Inbound::Heartbeat(event) => session.handle_heartbeat(event),
    }
}

pub async fn run(config: Config) -> Result<(), ServerError> {
    let mut shutdown = Shutdown::listen().map_err(ServerError::Signals)?;
    let (tx, mut rx) = mpsc::channel(net::INBOUND_CAPACITY);
    let mut net = net::start(
        &NetConfig {
            bind_address: config.bind_address.clone(),
            port: config.port,
            max_message_size: config.max_message_size,
            timeout_ms: config.timeout_ms,
        },
        tx,
    )?;
    let mut session = SessionState::new(SessionConfig {
        admin_password: config.admin_password.clone(),
        server_password: config.server_password.clone(),
    });
    info!(
        version = env!("CARGO_PKG_VERSION"),
        protocol = crate::session::PROTOCOL_VERSION,
        command = config.port,
        data = config.data_port(),
        heartbeat = config.heartbeat_port(),
        bind = %config.bind_address,
        session = if config.is_private() { "private (server password set)" } else { "public (no server password)" },
        timeout_ms = config.timeout_ms,
        max_message_size = config.max_message_size,
        "replication server listening"
    );
    if config.uses_default_admin_password() {
        warn!("ADMIN_PASSWORD is the default 'admin': anyone can log in as admin and kick users. Set ADMIN_PASSWORD.");
    }
    info!(state = ?session.state(), "waiting for an admin to initialise the session");
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                handle(&mut session, event);
                for _ in 1..EVENT_BATCH {
                    match rx.try_recv() {
                        Ok(event) => handle(&mut session, event),
                        Err(_) => break,
                    }
                }
                dispatch(&mut session, &mut net);
            }
            signal = shutdown.recv() => {
                info!(signal, users = session.client_count(), nodes = session.graph().len(), "shutting down");
                break;
            }
        }
    }
    drop(rx);
    net.shutdown();
    info!("server stopped");
    Ok(())
}
