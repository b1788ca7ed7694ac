//! A stand-in for the node agent's health-check node port: it answers exactly what the
//! contract says for one service, from a count of ready local endpoints fixed at start,
//! so the load balancer can be tested before `svcnft run` serves these ports itself.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// One health-check node port: the service it speaks for and its local endpoints.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub port: u16,
    /// `NAMESPACE/NAME`.
    pub service: String,
    pub local_endpoints: usize,
}

/// Serves the health check on every address of the namespace until killed.
pub fn serve(config: HealthCheckConfig) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::from([0u16; 8]), config.port))?;
    for stream in listener.incoming().flatten() {
        let config = config.clone();
        // A client that vanishes mid-request is not the server's problem.
        thread::spawn(move || answer(stream, &config));
    }
    Ok(())
}

/// The status line and body the contract prescribes: 200 with at least one ready local
/// endpoint, 503 without.
pub fn response(config: &HealthCheckConfig) -> (u16, String) {
    let (namespace, name) = config.service.split_once('/').unwrap_or(("", &config.service));
    let body = format!(
        r#"{{"service":{{"namespace":"{namespace}","name":"{name}"}},"localEndpoints":{},"serviceProxyHealthy":true}}"#,
        config.local_endpoints
    );
    (if config.local_endpoints > 0 { 200 } else { 503 }, body)
}

fn answer(stream: TcpStream, config: &HealthCheckConfig) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !line.trim().is_empty() {
        line.clear();
    }
    let (status, body) = response(config);
    let reason = if status == 200 { "OK" } else { "Service Unavailable" };
    write!(
        &stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        config.local_endpoints,
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_the_local_endpoint_count() {
        let config = |n| HealthCheckConfig { port: 32122, service: "default/loadbalancer".into(), local_endpoints: n };
        let (status, body) = response(&config(1));
        assert_eq!(status, 200);
        assert_eq!(
            body,
            r#"{"service":{"namespace":"default","name":"loadbalancer"},"localEndpoints":1,"serviceProxyHealthy":true}"#
        );
        assert_eq!(response(&config(0)).0, 503);
    }
}
