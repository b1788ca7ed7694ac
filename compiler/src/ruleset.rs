//! The nftables object model: tables, chains, sets, maps and rules as Rust values.
//! Rendering, the tracer, the diff and the netlink encoder all read this one
//! model, so what we print, predict and send cannot drift apart.
//!
//! Matches and statements are the small vocabulary our rulesets use, each with one
//! exact meaning in the kernel; nothing here is a string of nft syntax.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use smallvec::SmallVec;

use crate::policy::{Family, Protocol};

/// The name of every table svcnft owns (one per family).
pub const TABLE_NAME: &str = "svcnft";

/// The packet-mark bit that asks nat/srcnat to masquerade (kube-proxy's value).
pub const MASQUERADE_MARK: u32 = 0x4000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// Sets and maps, declared before the chains that use them; shared like chains.
    pub sets: Vec<Arc<Set>>,
    /// Shared: a chain that did not change between two lowerings is the same
    /// allocation in both (see `lower::Lowering`).
    pub chains: Vec<Arc<Chain>>,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name).map(|c| &**c)
    }

    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name).map(|s| &**s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub name: String,
    /// Set for base chains (attached to a netfilter hook).
    pub hook: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BaseHook {
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Set {
    pub name: String,
    /// The key's components (a concatenation when more than one).
    pub key: Vec<KeyType>,
    /// What a map's elements hold; `None` for a set.
    pub data: Option<MapData>,
    /// Sets filled by the data path (`update`), with this timeout per element.
    pub dynamic_timeout: Option<Duration>,
    pub comment: Option<String>,
    pub elements: Vec<Element>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    /// A number `numgen` draws (a 32-bit integer in host byte order).
    Numgen,
}

/// What the elements of a map hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapData {
    Verdict,
    /// An endpoint, `address . port`, that a `dnat … map` rewrites to.
    Endpoint,
}

impl KeyType {
    pub fn addr(family: Family) -> KeyType {
        match family {
            Family::Ipv4 => KeyType::Ipv4Addr,
            Family::Ipv6 => KeyType::Ipv6Addr,
        }
    }
}

/// A set key: one value, or the components of a concatenation. Held inline, as
/// a table has hundreds of thousands of elements that the diff compares.
pub type Key = SmallVec<[Value; 3]>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Element {
    pub key: Key,
    /// The value of a map element; `None` in a set.
    pub data: Option<ElementData>,
}

impl Element {
    /// A set element.
    pub fn key(key: &[Value]) -> Element {
        Element { key: Key::from_slice(key), data: None }
    }

    /// A verdict-map element.
    pub fn verdict(key: &[Value], verdict: Verdict) -> Element {
        Element { key: Key::from_slice(key), data: Some(ElementData::Verdict(verdict)) }
    }

    /// An endpoint-map element.
    pub fn endpoint(key: u32, address: IpAddr, port: u16) -> Element {
        Element { key: Key::from_slice(&[Value::Index(key)]), data: Some(ElementData::Endpoint { address, port }) }
    }

    /// The verdict of a verdict-map element.
    pub fn verdict_data(&self) -> Option<&Verdict> {
        match &self.data {
            Some(ElementData::Verdict(v)) => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElementData {
    Verdict(Verdict),
    Endpoint { address: IpAddr, port: u16 },
}

/// A constant a packet field is compared with, or a set key component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Value {
    Addr(IpAddr),
    /// An address prefix: compared under its mask.
    Net(IpNet),
    Proto(Protocol),
    Port(u16),
    /// A number `numgen` draws: the key of an endpoint map.
    Index(u32),
}

/// The packet fields our rules read. Addresses are of the table's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Field {
    /// `ip saddr` / `ip6 saddr`.
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`: the destination port of TCP, UDP or SCTP.
    Dport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddrField {
    Saddr,
    Daddr,
}

/// One condition of a rule; a rule applies when all hold, in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Match {
    /// `FIELD VALUE` or `FIELD != VALUE` (a `Net` value compares the prefix).
    Cmp { field: Field, negate: bool, value: Value },
    /// `KEY @SET` or `KEY != @SET`.
    InSet { key: Vec<Field>, set: String, negate: bool },
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`: the connection's destination was rewritten.
    CtStatusDnat,
    /// `fib saddr type local` / `fib daddr type local`.
    FibLocal(AddrField),
    /// `numgen random mod MODULUS == VALUE`: each evaluation draws anew.
    Numgen { modulus: u32, value: u32 },
    /// `meta mark & MASK == 0`.
    MarkClear(u32),
}

/// What a rule does once it applies, in order; a verdict ends it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Statement {
    /// `meta mark set meta mark | BITS`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ BITS`.
    MarkXor(u32),
    /// `update @SET { KEY }`: add or refresh the packet's key in a dynamic set.
    Update {
        set: String,
        key: Vec<Field>,
    },
    /// `KEY vmap @MAP`: continue with the matching element's verdict, if any.
    Vmap {
        key: Vec<Field>,
        map: String,
    },
    /// `dnat to ADDR:PORT` (terminal, accepts).
    Dnat {
        address: IpAddr,
        port: u16,
    },
    /// `dnat to numgen random mod MODULUS offset OFFSET map @MAP`: draws one of
    /// the keys `OFFSET..OFFSET+MODULUS` and rewrites to that element's endpoint
    /// (terminal, accepts); a key without element does not match.
    DnatMap {
        modulus: u32,
        offset: u32,
        map: String,
    },
    /// `masquerade fully-random` (terminal, accepts).
    Masquerade,
    /// `reject`: ICMP port unreachable (terminal).
    Reject,
    Verdict(Verdict),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub statements: Vec<Statement>,
    /// Provenance, e.g. `default/web 80/tcp`, shown by `nft list ruleset`.
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, statements: Vec<Statement>) -> Rule {
        Rule { matches, statements, comment: None }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}
