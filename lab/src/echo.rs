//! An echo server in the manner of the tutorial's `echoserver`: it reports the address the
//! connection came from, which is exactly what the source-IP questions are about.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

/// How to serve: the name shown as `Hostname` (namespaces share the host's UTS name, so
/// the pod name is passed in), the port (TCP and UDP) and the HTTP status to answer with
/// (a health-check stub answers 503 to look unhealthy).
#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub name: String,
    pub port: u16,
    pub status: u16,
}

/// Serves HTTP on TCP and echoes on UDP, on every address of the namespace, until killed.
pub fn serve(config: EchoConfig) -> std::io::Result<()> {
    // One dual-stack TCP socket: IPv4 peers show as mapped addresses, which
    // `to_canonical` undoes.
    let tcp = TcpListener::bind(SocketAddr::new(IpAddr::from([0u16; 8]), config.port))?;
    // One UDP socket per address, so that each knows the address it was reached at (a
    // wildcard one would report `[::]`): after DNAT, that is the endpoint.
    for addr in local_addresses()? {
        let udp = UdpSocket::bind(SocketAddr::new(addr, config.port))?;
        let udp_config = config.clone();
        thread::spawn(move || serve_udp(&udp, &udp_config));
    }
    for stream in tcp.incoming().flatten() {
        let config = config.clone();
        thread::spawn(move || {
            // A client that vanishes mid-request is not the server's problem.
            let _ = answer(stream, &config);
        });
    }
    Ok(())
}

/// The namespace's own addresses, but link-local ones (binding those needs a scope).
fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which is freed below and not used after.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, and each address
        // points to the sockaddr type its family names.
        let ifa = unsafe { &*cur };
        let addr = unsafe {
            match ifa.ifa_addr.as_ref().map(|a| i32::from(a.sa_family)) {
                Some(libc::AF_INET) => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(IpAddr::from(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
                }
                Some(libc::AF_INET6) => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(IpAddr::from(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        out.extend(addr.filter(|a| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())));
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    Ok(out)
}

fn serve_udp(socket: &UdpSocket, config: &EchoConfig) {
    let mut buf = vec![0; 65536];
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let local = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let body = report(config, peer, &local, "UDP", request.trim(), &[]);
        let _ = socket.send_to(body.as_bytes(), peer);
    }
}

fn answer(stream: TcpStream, config: &EchoConfig) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let local_ip = SocketAddr::new(local.ip().to_canonical(), local.port());
    let body = report(config, peer, &local_ip.to_string(), method, path, &headers);
    let reason = match config.status {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Status",
    };
    write!(
        &stream,
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        config.status,
        body.len()
    )
}

fn report(
    config: &EchoConfig,
    peer: SocketAddr,
    local: &str,
    command: &str,
    path: &str,
    headers: &[(String, String)],
) -> String {
    let mut out = format!(
        "Hostname: {}\n\nCLIENT VALUES:\nclient_address={}\nclient_port={}\ncommand={command}\nreal path={path}\n\nSERVER VALUES:\nhostname={}\nserver_address={local}\n\nHEADERS RECEIVED:\n",
        config.name,
        peer.ip().to_canonical(),
        peer.port(),
        config.name,
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}
