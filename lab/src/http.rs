//! A minimal HTTP/1.1 (and UDP) client, so the lab needs no curl inside its namespaces.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::Error;

/// What a `get` target names: a transport and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub udp: bool,
    pub addr: SocketAddr,
    pub path: String,
}

impl Target {
    /// Parses `http://ADDR:PORT/PATH` or `udp://ADDR:PORT` (IPv6 in brackets).
    /// Only literal addresses: the lab has no DNS.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = || Error::Url(url.to_string());
        let (udp, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("udp://") {
            (true, rest)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = match authority.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let host = authority.trim_start_matches('[').trim_end_matches(']');
                SocketAddr::new(host.parse::<IpAddr>().map_err(|_| bad())?, 80)
            }
        };
        Ok(Self { udp, addr, path: path.to_string() })
    }

    /// The URL form of an address, bracketing IPv6.
    pub fn url(addr: IpAddr, port: u16) -> String {
        format!("http://{}/", SocketAddr::new(addr, port))
    }
}

/// A response: the status code (0 for UDP, which has none) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The value of a `key=value` line of the body, as the echo server writes them.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.body.lines().find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
    }

    /// Serializes as a status line then the body, for passing across `ip netns exec`.
    pub fn to_wire(&self) -> String {
        format!("{}\n{}", self.status, self.body)
    }

    /// The inverse of [`Response::to_wire`].
    pub fn from_wire(text: &str) -> Result<Self, Error> {
        let (status, body) = text.split_once('\n').unwrap_or((text, ""));
        let status = status.trim().parse().map_err(|_| Error::Http(format!("bad status line `{status}`")))?;
        Ok(Self { status, body: body.to_string() })
    }
}

/// How a request ended, told apart the way a test needs them: an answer, a refusal
/// (TCP reset or ICMP unreachable: a reject), silence (a drop), or another failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered(Response),
    Refused,
    TimedOut,
    Failed(String),
}

/// Sends one request and classifies how it ended.
pub fn probe(target: &Target, timeout: Duration) -> Outcome {
    match exchange(target, timeout) {
        Ok(response) => Outcome::Answered(response),
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            Outcome::TimedOut
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Sends one request and waits at most `timeout` to connect and again for each read.
pub fn get(target: &Target, timeout: Duration) -> Result<Response, Error> {
    exchange(target, timeout).map_err(|e| match e {
        Error::Io(e) => Error::Http(format!("{}: {e}", target.addr)),
        Error::Http(msg) => Error::Http(format!("{}: {msg}", target.addr)),
        e => e,
    })
}

fn exchange(target: &Target, timeout: Duration) -> Result<Response, Error> {
    if target.udp {
        let local: SocketAddr = if target.addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.connect(target.addr)?;
        socket.send(target.path.as_bytes())?;
        let mut buf = vec![0; 65536];
        let n = socket.recv(&mut buf)?;
        return Ok(Response { status: 0, body: String::from_utf8_lossy(&buf[..n]).into_owned() });
    }
    let mut stream = TcpStream::connect_timeout(&target.addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: svcnft-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path, target.addr
    )?;
    read_response(BufReader::new(stream))
}

/// Reads a response whatever framing the server chose (length, chunks or close), so the
/// load balancer's checks work against any health server, keep-alive or not.
fn read_response(mut reader: impl BufRead) -> Result<Response, Error> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Error::Http(format!("bad status line `{}`", line.trim())))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| Error::Http(format!("bad chunk size `{}`", line.trim())))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://10.0.0.1:8080/x").unwrap();
        assert_eq!((t.udp, t.addr, t.path.as_str()), (false, "10.0.0.1:8080".parse().unwrap(), "/x"));
        let t = Target::parse("udp://[fd00::1]:53").unwrap();
        assert_eq!((t.udp, t.addr), (true, "[fd00::1]:53".parse().unwrap()));
        let t = Target::parse("http://[fd00::1]").unwrap();
        assert_eq!((t.addr, t.path.as_str()), ("[fd00::1]:80".parse().unwrap(), "/"));
        assert!(Target::parse("https://10.0.0.1/").is_err());
        assert!(Target::parse("http://example.com/").is_err());
    }

    #[test]
    fn reads_values_and_round_trips() {
        let r = Response { status: 200, body: "CLIENT VALUES:\nclient_address=10.240.0.5\n".into() };
        assert_eq!(r.value("client_address"), Some("10.240.0.5"));
        assert_eq!(r.value("client"), None);
        assert_eq!(Response::from_wire(&r.to_wire()).unwrap(), r);
    }

    #[test]
    fn reads_every_framing() {
        let read = |raw: &str| read_response(raw.as_bytes()).unwrap();
        // Bytes after the declared length belong to the next response on a kept-alive
        // connection, not to this one.
        let sized = read("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}junk");
        assert_eq!((sized.status, sized.body.as_str()), (503, "{}"));
        let chunked = read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
        assert_eq!((chunked.status, chunked.body.as_str()), (200, "abcde"));
        let closed = read("HTTP/1.0 200 OK\r\n\r\nuntil close");
        assert_eq!(closed.body, "until close");
        assert!(read_response("garbage".as_bytes()).is_err());
    }
}
