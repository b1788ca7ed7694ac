//! The proxy's own endpoints: health (`/healthz`, `/livez`) and metrics
//! (`/metrics`, `/proxyMode`, `/healthz`).

use std::sync::Arc;
use std::time::SystemTime;

use hyper::StatusCode;

use super::http::{not_found, respond, Handler};
use super::metrics::Metrics;
use super::state::Status;

/// `/healthz` and `/livez`: 200 or 503 with kube-proxy's JSON body.
pub(crate) fn healthz(status: Arc<Status>) -> Handler {
    Arc::new(move |path: &str| match path {
        "/healthz" | "/livez" => {
            let health = status.health();
            let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
            let body = serde_json::json!({
                "lastUpdated": health.last_updated.map(time),
                "currentTime": time(SystemTime::now()),
                "healthy": health.healthy,
            });
            let code = if health.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            respond(code, "application/json", body.to_string())
        }
        _ => not_found(),
    })
}

/// `/metrics`, `/proxyMode` and a plain `/healthz`.
pub(crate) fn metrics(metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |path: &str| match path {
        "/metrics" => {
            respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
        }
        "/proxyMode" => respond(StatusCode::OK, "text/plain; charset=utf-8", "nftables"),
        "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        _ => not_found(),
    })
}
