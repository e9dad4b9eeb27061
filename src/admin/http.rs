//! The admin HTTP endpoint. Handlers only translate: every answer comes
//! from the server loop through `AdminRequest`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{AdminRequest, Health, Status};
use crate::control::{Control, ControlSender};
use crate::metrics::NetMetrics;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "refusing to start: the admin endpoint {0} is reachable from the network and ADMIN_PASSWORD is the default \
         'admin'; set ADMIN_PASSWORD, or keep ADMIN_ADDR on 127.0.0.1"
    )]
    DefaultPassword(SocketAddr),
    #[error("cannot listen for admin requests on {0}: {1} (set ADMIN_ADDR to another address, or empty to disable)")]
    Bind(SocketAddr, std::io::Error),
}

#[derive(Clone)]
struct AdminState {
    control: ControlSender,
    net: Arc<NetMetrics>,
    /// The bearer token every call but /health needs; None on loopback.
    token: Option<Arc<str>>,
}

/// Binds the endpoint, refusing a network-reachable one guarded only by
/// the default password.
pub async fn bind(addr: SocketAddr, default_password: bool) -> Result<tokio::net::TcpListener, AdminError> {
    if !addr.ip().is_loopback() && default_password {
        return Err(AdminError::DefaultPassword(addr));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AdminError::Bind(addr, e))
}

/// Serves admin requests until `stopped` fires (or its sender is gone).
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: ControlSender,
    net: Arc<NetMetrics>,
    admin_password: String,
    stopped: oneshot::Receiver<()>,
) {
    let addr = listener.local_addr().ok();
    let loopback = addr.is_some_and(|a| a.ip().is_loopback());
    let state = AdminState {
        control,
        net,
        token: (!loopback).then(|| Arc::from(admin_password.as_str())),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/users", get(users))
        .route("/users/{name}/kick", post(kick))
        .route("/save", post(save))
        .route("/export", get(export))
        .with_state(state);
    info!(
        addr = %addr.map(|a| a.to_string()).unwrap_or_default(),
        auth = if loopback { "none (loopback only)" } else { "bearer token (ADMIN_PASSWORD)" },
        "admin endpoint listening"
    );
    let stopped = async move {
        let _ = stopped.await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        warn!("the admin endpoint stopped: {e}");
    }
}

/// An answer other than success: its status and a message for people.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

type Answer = Result<Response, ApiError>;

/// Compares without stopping at the first difference, so response times
/// do not reveal how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => {
            warn!("admin request refused: wrong bearer token");
            Err(error(StatusCode::UNAUTHORIZED, "wrong token"))
        }
        None => {
            warn!("admin request refused: no bearer token");
            Err(error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the admin password as a bearer token",
            ))
        }
    }
}

/// Sends a request to the server loop and waits for its answer.
async fn ask<T>(state: &AdminState, make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let gone = || error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    if !state.control.send(Control::Admin(make(tx))) {
        return Err(gone());
    }
    rx.await.map_err(|_| gone())
}

async fn status(state: &AdminState) -> Result<Status, ApiError> {
    ask(state, AdminRequest::Status).await
}

async fn health(State(state): State<AdminState>) -> Answer {
    let status = status(&state).await?;
    let health = Health::of(&status, state.net.sockets_up(), crate::store::now_epoch());
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(health)).into_response())
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let s = status(&state).await?;
    let text = crate::metrics::render(&state.net, &s.gauges);
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response())
}

async fn users(State(state): State<AdminState>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let s = status(&state).await?;
    Ok(Json(serde_json::json!({ "users": s.users })).into_response())
}

async fn kick(State(state): State<AdminState>, Path(name): Path<String>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let user = name.clone();
    if ask(&state, |reply| AdminRequest::Kick { user, reply }).await? {
        Ok(Json(serde_json::json!({ "kicked": name })).into_response())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            format!("no user named {name:?} is online"),
        ))
    }
}

async fn save(State(state): State<AdminState>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    match ask(&state, AdminRequest::Save).await? {
        Ok(report) => Ok(Json(report).into_response()),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the save failed: {e}"),
        )),
    }
}

async fn export(State(state): State<AdminState>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let view = ask(&state, AdminRequest::Export).await?;
    let nodes = view.nodes.len();
    // Encoding a large session takes a while: off the runtime's workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let image = crate::store::writer::image_of(view, "export", crate::store::now_epoch(), 0);
        crate::store::dump::encode(&image)
    })
    .await
    .map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the export task failed: {e}"),
        )
    })?
    .map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the session: {e}"),
        )
    })?;
    info!(nodes, bytes = encoded.len(), "session exported over the admin endpoint");
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::CONTENT_DISPOSITION, "attachment; filename=\"session.db\""),
    ];
    Ok((headers, encoded).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
