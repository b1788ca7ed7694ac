//! Health-check node ports: what a load balancer asks a node before sending it
//! a service's external traffic (eTP local).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use svcnft_compiler::plan::HealthCheck;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::http::{respond, serve, Handler};
use super::state::Status;

/// The current health checks by port; servers read it on every request, so
/// counts change without restarting them.
type Checks = Arc<Mutex<HashMap<u16, HealthCheck>>>;

/// The running health-check servers, started and stopped as services come and go.
pub struct HealthServers {
    runtime: Handle,
    status: Arc<Status>,
    checks: Checks,
    running: HashMap<u16, Running>,
}

struct Running {
    addresses: Vec<IpAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl HealthServers {
    pub fn new(runtime: Handle, status: Arc<Status>) -> Self {
        HealthServers { runtime, status, checks: Checks::default(), running: HashMap::new() }
    }

    /// Serves exactly `checks`: new ports start, gone ports stop, counts update.
    pub fn update(&mut self, checks: &[HealthCheck]) {
        let by_port: HashMap<u16, HealthCheck> = checks.iter().map(|c| (c.port.get(), c.clone())).collect();
        self.running.retain(|port, running| by_port.get(port).is_some_and(|c| c.addresses == running.addresses));
        *self.checks.lock().unwrap_or_else(|p| p.into_inner()) = by_port;
        for check in checks {
            let port = check.port.get();
            if !self.running.contains_key(&port) {
                // A server missing an address is retried on the next update.
                if let Some(tasks) = self.start(check) {
                    self.running.insert(port, Running { addresses: check.addresses.clone(), tasks });
                }
            }
        }
    }

    /// Serves `check` on every address, or on none.
    fn start(&self, check: &HealthCheck) -> Option<Vec<JoinHandle<()>>> {
        let port = check.port.get();
        let handler: Handler = {
            let (checks, status) = (self.checks.clone(), self.status.clone());
            Arc::new(move |_: &str| {
                let check = checks.lock().unwrap_or_else(|p| p.into_inner()).get(&port).cloned();
                check.map_or_else(super::http::not_found, |c| answer(&c, status.health().healthy))
            })
        };
        let mut listeners = Vec::new();
        for address in bind_addresses(check) {
            match std::net::TcpListener::bind(address) {
                Ok(listener) => listeners.push((address, listener)),
                Err(e) => {
                    tracing::warn!(service = %check.service, %address, error = %e, "cannot serve health check");
                    return None;
                }
            }
        }
        let serve = |(address, listener)| {
            tracing::info!(service = %check.service, %address, "serving health check");
            self.runtime.spawn(serve(listener, handler.clone()))
        };
        Some(listeners.into_iter().map(serve).collect())
    }
}

/// The node-port addresses, or every address (IPv6 any is dual-stack; IPv4 any
/// where there is no IPv6).
fn bind_addresses(check: &HealthCheck) -> Vec<SocketAddr> {
    let port = check.port.get();
    if !check.addresses.is_empty() {
        return check.addresses.iter().map(|a| SocketAddr::new(*a, port)).collect();
    }
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    if std::net::TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).is_ok() {
        vec![v6]
    } else {
        vec![v4]
    }
}

/// kube-proxy's answer: 200 with at least one ready local endpoint, else 503.
pub(crate) fn answer(check: &HealthCheck, proxy_healthy: bool) -> Response<Full<Bytes>> {
    let status = if check.local_endpoints > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "service": { "namespace": check.service.namespace, "name": check.service.name },
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    let mut response = respond(status, "application/json", body.to_string());
    let headers = response.headers_mut();
    headers.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    headers.insert("X-Load-Balancing-Endpoint-Weight", HeaderValue::from(check.local_endpoints));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use svcnft_compiler::policy::ServiceName;

    fn reply(local_endpoints: usize, healthy: bool) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
        let service = ServiceName { namespace: "shop".into(), name: "web".into() };
        let check = HealthCheck { service, port: 32000.try_into().unwrap(), local_endpoints, addresses: vec![] };
        let (parts, body) = answer(&check, healthy).into_parts();
        let bytes = block_on(body.collect()).unwrap().to_bytes();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn ready_local_endpoints_decide_the_status_and_the_weight() {
        let (status, headers, body) = reply(2, true);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-load-balancing-endpoint-weight"], "2");
        assert_eq!(
            body,
            serde_json::json!({
                "service": { "namespace": "shop", "name": "web" },
                "localEndpoints": 2,
                "serviceProxyHealthy": true,
            })
        );
        let (status, headers, body) = reply(0, false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-load-balancing-endpoint-weight"], "0");
        assert_eq!(body["serviceProxyHealthy"], false);
    }
}
