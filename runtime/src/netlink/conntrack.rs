//! ctnetlink: listing and deleting connection-tracking entries.
//!
//! Only what the agent needs to unstick UDP clients: a dump of the flows of one
//! family, and the deletion of a flow by its original tuple (as dumped, so the
//! kernel finds exactly that entry).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::attr::{Attrs, Writer};
use super::codec::{begin_msg, end_msg, NLM_F_ACK, NLM_F_DUMP};
use super::conn::exchange;
use super::Error;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const RECV_BUF: usize = 1 << 16;

/// One direction of a flow: source and destination (ports 0 for portless protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub protocol: u8,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// A tracked connection, as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub original: Tuple,
    pub reply: Tuple,
    /// The original tuple as the kernel encoded it: deletion sends it back.
    raw_original: Vec<u8>,
    zone: Option<Vec<u8>>,
}

/// A ctnetlink socket in the calling thread's network namespace.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> Result<Self, Error> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        Ok(Conntrack { sock, seq: 0, buf: vec![0; RECV_BUF] })
    }

    /// Every tracked flow of `family` (`libc::AF_INET` or `libc::AF_INET6`).
    pub fn flows(&mut self, family: u8) -> Result<Vec<Flow>, Error> {
        let mut flows = Vec::new();
        self.request(
            IPCTNL_MSG_CT_GET,
            NLM_F_DUMP,
            family,
            |_| {},
            |attrs| {
                if let Some(flow) = decode_flow(attrs)? {
                    flows.push(flow);
                }
                Ok(())
            },
        )?;
        Ok(flows)
    }

    /// Deletes one flow; a flow already gone is not an error.
    pub fn delete(&mut self, flow: &Flow) -> Result<(), Error> {
        let family = if flow.original.source.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
        let result = self.request(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_ACK,
            family,
            |w| {
                w.nest(CTA_TUPLE_ORIG, |w| w.buf.extend_from_slice(&flow.raw_original));
                if let Some(zone) = &flow.zone {
                    w.put(CTA_ZONE, zone);
                }
            },
            |_| Ok(()),
        );
        match result {
            Err(Error::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn request(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: impl FnOnce(&mut Writer),
        mut on: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = Vec::new();
        let start = begin_msg(&mut req, (NFNL_SUBSYS_CTNETLINK << 8) | msg, flags, seq, family, 0);
        attrs(&mut Writer { buf: &mut req });
        end_msg(&mut req, start);
        exchange(&self.sock, &mut self.buf, &req, seq, |m| on(m.payload.get(4..).unwrap_or_default()))
    }
}

fn decode_flow(attrs: &[u8]) -> Result<Option<Flow>, Error> {
    let (mut original, mut reply, mut zone) = (None, None, None);
    for a in Attrs::new(attrs) {
        match a? {
            (CTA_TUPLE_ORIG, v) => original = Some((decode_tuple(v)?, v.to_vec())),
            (CTA_TUPLE_REPLY, v) => reply = decode_tuple(v)?,
            (CTA_ZONE, v) => zone = Some(v.to_vec()),
            _ => {}
        }
    }
    Ok(match (original, reply) {
        (Some((Some(original), raw_original)), Some(reply)) => Some(Flow { original, reply, raw_original, zone }),
        _ => None,
    })
}

fn decode_tuple(data: &[u8]) -> Result<Option<Tuple>, Error> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, 0, 0);
    for a in Attrs::new(data) {
        match a? {
            (CTA_TUPLE_IP, ip) => {
                for a in Attrs::new(ip) {
                    let (ty, v) = a?;
                    let addr = match v.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).unwrap())),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).unwrap())),
                        _ => continue,
                    };
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(addr),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(addr),
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, proto) => {
                for a in Attrs::new(proto) {
                    match a? {
                        (CTA_PROTO_NUM, [p]) => protocol = Some(*p),
                        (CTA_PROTO_SRC_PORT, [a, b]) => sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b]) => dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(match (src, dst, protocol) {
        (Some(s), Some(d), Some(protocol)) => {
            Some(Tuple { protocol, source: SocketAddr::new(s, sport), destination: SocketAddr::new(d, dport) })
        }
        _ => None,
    })
}
