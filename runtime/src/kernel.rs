//! Translation between the compiler's ruleset model and nf_tables kernel objects,
//! both ways. Encoding produces exactly the expressions `nft -f` builds from our
//! rendering (so the kernel holds the same bytecode either way); decoding reads our
//! own tables back into the model so the committed state can be diffed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;
use svcnft_compiler::policy::{Family, Protocol};
use svcnft_compiler::ruleset::{
    AddrField, BaseHook, Chain, ChainKind, Element, ElementData, Field, Hook, KeyType, MapData, Match, Rule, Set,
    Statement, Table, Value, Verdict, TABLE_NAME,
};

use crate::netlink::{self as nl, Bytes, CmpOp, CtKey, Data, DynsetOp, Expr, FibResult, MetaKey, PayloadBase, Reg};

const CT_STATE_NEW: u32 = 0x08;
const CT_STATUS_DNAT: u32 = 0x20;
const RTN_LOCAL: u32 = 2;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;

pub fn nl_family(family: Family) -> nl::Family {
    match family {
        Family::Ipv4 => nl::Family::Ip,
        Family::Ipv6 => nl::Family::Ip6,
    }
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::Ipv4 => 4,
        Family::Ipv6 => 16,
    }
}

/// Where an address field sits in the network header.
fn addr_offset(family: Family, field: AddrField) -> u32 {
    match (family, field) {
        (Family::Ipv4, AddrField::Saddr) => 12,
        (Family::Ipv4, AddrField::Daddr) => 16,
        (Family::Ipv6, AddrField::Saddr) => 8,
        (Family::Ipv6, AddrField::Daddr) => 24,
    }
}

fn field_len(family: Family, field: Field) -> u32 {
    match field {
        Field::Saddr | Field::Daddr => addr_len(family),
        Field::L4Proto => 1,
        Field::Dport => 2,
    }
}

/// The expression loading `field` (or its first `len` bytes) into `dreg`.
fn load(family: Family, field: Field, len: u32, dreg: Reg) -> Expr {
    match field {
        Field::Saddr => {
            Expr::Payload { dreg, base: PayloadBase::Network, offset: addr_offset(family, AddrField::Saddr), len }
        }
        Field::Daddr => {
            Expr::Payload { dreg, base: PayloadBase::Network, offset: addr_offset(family, AddrField::Daddr), len }
        }
        Field::L4Proto => Expr::Meta { dreg, key: MetaKey::L4Proto },
        Field::Dport => Expr::Payload { dreg, base: PayloadBase::Transport, offset: 2, len },
    }
}

/// Loads a (possibly concatenated) key component by component into consecutive
/// 32-bit registers, as nft lays out concatenations; returns the first register.
fn load_key(family: Family, key: &[Field], out: &mut Vec<Expr>) -> Reg {
    let mut next = 0;
    for field in key {
        let len = field_len(family, *field);
        out.push(load(family, *field, len, Reg::r32(next)));
        next += len.div_ceil(4);
    }
    Reg::r32(0)
}

fn value_bytes(value: &Value) -> Bytes {
    match value {
        Value::Addr(a) => addr_bytes(*a),
        Value::Net(n) => addr_bytes(n.network()),
        Value::Proto(p) => [p.number()].as_slice().into(),
        Value::Port(p) => p.to_be_bytes().as_slice().into(),
        Value::Index(i) => i.to_ne_bytes().as_slice().into(),
    }
}

fn addr_bytes(a: IpAddr) -> Bytes {
    match a {
        IpAddr::V4(a) => a.octets().as_slice().into(),
        IpAddr::V6(a) => a.octets().as_slice().into(),
    }
}

fn u32_reg(v: u32) -> Bytes {
    v.to_ne_bytes().as_slice().into()
}

/// `load; bitwise (& mask); cmp op 0`-style tests on host-order 32-bit values.
fn masked(load: Expr, mask: u32, op: CmpOp, value: u32, out: &mut Vec<Expr>) {
    let r = Reg::r32(0);
    out.push(load);
    out.push(Expr::Bitwise { sreg: r, dreg: r, mask: u32_reg(mask), xor: u32_reg(0) });
    out.push(Expr::Cmp { sreg: r, op, data: u32_reg(value) });
}

fn encode_match(family: Family, m: &Match, out: &mut Vec<Expr>) {
    let r = Reg::r32(0);
    match m {
        Match::Cmp { field, negate, value } => {
            let op = if *negate { CmpOp::Neq } else { CmpOp::Eq };
            let full = field_len(family, *field);
            match value {
                Value::Net(net) if u32::from(net.prefix_len()) < full * 8 => {
                    // As nft: a prefix of whole bytes loads only those bytes; any
                    // other loads the whole address and masks it.
                    let prefix = u32::from(net.prefix_len());
                    let network = addr_bytes(net.network());
                    if prefix % 8 == 0 {
                        let bytes = prefix / 8;
                        out.push(load(family, *field, bytes, r));
                        out.push(Expr::Cmp { sreg: r, op, data: network[..bytes as usize].into() });
                    } else {
                        out.push(load(family, *field, full, r));
                        let xor = Bytes::from_elem(0, full as usize);
                        out.push(Expr::Bitwise { sreg: r, dreg: r, mask: addr_bytes(net.netmask()), xor });
                        out.push(Expr::Cmp { sreg: r, op, data: network });
                    }
                }
                _ => {
                    out.push(load(family, *field, full, r));
                    out.push(Expr::Cmp { sreg: r, op, data: value_bytes(value) });
                }
            }
        }
        Match::InSet { key, set, negate } => {
            let sreg = load_key(family, key, out);
            out.push(Expr::Lookup { set: set.clone(), sreg, dreg: None, invert: *negate });
        }
        Match::CtStateNew => masked(Expr::Ct { dreg: r, key: CtKey::State }, CT_STATE_NEW, CmpOp::Neq, 0, out),
        Match::CtStatusDnat => masked(Expr::Ct { dreg: r, key: CtKey::Status }, CT_STATUS_DNAT, CmpOp::Neq, 0, out),
        Match::FibLocal(dir) => {
            let flags = match dir {
                AddrField::Saddr => nl::fib_flags::SADDR,
                AddrField::Daddr => nl::fib_flags::DADDR,
            };
            out.push(Expr::Fib { dreg: r, result: FibResult::AddrType, flags });
            out.push(Expr::Cmp { sreg: r, op: CmpOp::Eq, data: u32_reg(RTN_LOCAL) });
        }
        Match::Numgen { modulus, value } => {
            out.push(Expr::Numgen { dreg: r, random: true, modulus: *modulus, offset: 0 });
            out.push(Expr::Cmp { sreg: r, op: CmpOp::Eq, data: u32_reg(*value) });
        }
        Match::MarkClear(mask) => masked(Expr::Meta { dreg: r, key: MetaKey::Mark }, *mask, CmpOp::Eq, 0, out),
    }
}

fn encode_verdict(v: &Verdict) -> nl::Verdict {
    match v {
        Verdict::Accept => nl::Verdict::Accept,
        Verdict::Drop => nl::Verdict::Drop,
        Verdict::Return => nl::Verdict::Return,
        Verdict::Jump(c) => nl::Verdict::Jump(c.clone()),
        Verdict::Goto(c) => nl::Verdict::Goto(c.clone()),
    }
}

fn encode_statement(family: Family, s: &Statement, out: &mut Vec<Expr>) {
    let r = Reg::r32(0);
    let mark_update = |mask: u32, xor: u32, out: &mut Vec<Expr>| {
        out.push(Expr::Meta { dreg: r, key: MetaKey::Mark });
        out.push(Expr::Bitwise { sreg: r, dreg: r, mask: u32_reg(mask), xor: u32_reg(xor) });
        out.push(Expr::MetaSet { key: MetaKey::Mark, sreg: r });
    };
    match s {
        Statement::MarkOr(bits) => mark_update(!bits, *bits, out),
        Statement::MarkXor(bits) => mark_update(u32::MAX, *bits, out),
        Statement::Update { set, key } => {
            let sreg_key = load_key(family, key, out);
            out.push(Expr::Dynset { op: DynsetOp::Update, set: set.clone(), sreg_key, sreg_data: None, timeout: None });
        }
        Statement::Vmap { key, map } => {
            let sreg = load_key(family, key, out);
            out.push(Expr::Lookup { set: map.clone(), sreg, dreg: Some(Reg::VERDICT), invert: false });
        }
        Statement::Dnat { address, port } => {
            let port_reg = Reg::r32(4);
            out.push(Expr::Immediate { dreg: r, data: Data::Value(addr_bytes(*address)) });
            out.push(Expr::Immediate { dreg: port_reg, data: Data::Value(port.to_be_bytes().as_slice().into()) });
            out.push(dnat(family, r, port_reg));
        }
        Statement::DnatMap { modulus, offset, map } => {
            // The drawn key, then the endpoint it maps to: address and port in
            // consecutive registers, as nft lays out concatenated map data.
            out.push(Expr::Numgen { dreg: r, random: true, modulus: *modulus, offset: *offset });
            out.push(Expr::Lookup { set: map.clone(), sreg: r, dreg: Some(r), invert: false });
            out.push(dnat(family, r, Reg::r32(addr_len(family).div_ceil(4))));
        }
        Statement::Masquerade => out.push(Expr::Masq { flags: nl::nat_flags::PROTO_RANDOM_FULLY }),
        Statement::Reject => out.push(Expr::Reject(nl::RejectKind::IcmpUnreach(match family {
            Family::Ipv4 => ICMP_PORT_UNREACH,
            Family::Ipv6 => ICMPV6_PORT_UNREACH,
        }))),
        Statement::Verdict(v) => {
            out.push(Expr::Immediate { dreg: Reg::VERDICT, data: Data::Verdict(encode_verdict(v)) })
        }
    }
}

/// DNAT to the address in `addr` and the port in `port`.
fn dnat(family: Family, addr: Reg, port: Reg) -> Expr {
    Expr::Nat { kind: nl::NatKind::Dnat, family: nl_family(family), addr: Some(addr), port: Some(port), flags: 0 }
}

/// A rule of `chain` as kernel expressions.
pub fn encode_rule(family: Family, chain: &str, rule: &Rule) -> nl::Rule {
    let mut exprs = Vec::new();
    for m in &rule.matches {
        encode_match(family, m, &mut exprs);
    }
    for s in &rule.statements {
        encode_statement(family, s, &mut exprs);
    }
    nl::Rule { chain: chain.to_string(), handle: None, exprs, comment: rule.comment.clone() }
}

pub fn encode_chain(name: &str, hook: Option<BaseHook>) -> nl::Chain {
    nl::Chain {
        name: name.to_string(),
        base: hook.map(|h| nl::BaseChain {
            kind: match h.kind {
                ChainKind::Filter => nl::ChainType::Filter,
                ChainKind::Nat => nl::ChainType::Nat,
            },
            hook: match h.hook {
                Hook::Prerouting => nl::Hook::Prerouting,
                Hook::Input => nl::Hook::Input,
                Hook::Forward => nl::Hook::Forward,
                Hook::Output => nl::Hook::Output,
                Hook::Postrouting => nl::Hook::Postrouting,
            },
            priority: h.priority,
            policy: nl::Policy::Accept,
        }),
    }
}

fn nl_key_type(k: KeyType) -> nl::KeyType {
    match k {
        KeyType::Ipv4Addr => nl::KeyType::Ipv4Addr,
        KeyType::Ipv6Addr => nl::KeyType::Ipv6Addr,
        KeyType::InetProto => nl::KeyType::InetProto,
        KeyType::InetService => nl::KeyType::InetService,
        KeyType::Numgen => nl::KeyType::Integer,
    }
}

/// The kernel's data type of an endpoint map: `address . port` of `family`.
fn endpoint_data(family: Family) -> Vec<nl::KeyType> {
    vec![nl_key_type(KeyType::addr(family)), nl::KeyType::InetService]
}

/// A set's declaration (no elements).
pub fn encode_set(family: Family, set: &Set) -> nl::Set {
    let dynamic = set.dynamic_timeout.is_some();
    let (data, typeof_description) = match set.data {
        None => (None, None),
        Some(MapData::Verdict) => (Some(nl::SetData::Verdict), None),
        Some(MapData::Endpoint) => (
            Some(nl::SetData::Value(endpoint_data(family))),
            Some(nl::numgen_to_address_port_typeof(nl_key_type(KeyType::addr(family)))),
        ),
    };
    nl::Set {
        name: set.name.clone(),
        key: set.key.iter().map(|k| nl_key_type(*k)).collect(),
        data,
        flags: nl::SetFlags { timeout: dynamic, dynamic, ..nl::SetFlags::default() },
        // No size, as nft sends none: with a size of 65535 the kernel allocated and
        // zeroed a 1 MiB hash table per affinity set (14 GiB for 10k services) and
        // capped it at that many clients; without one it starts small and grows.
        size: None,
        timeout: set.dynamic_timeout,
        typeof_description,
        comment: set.comment.clone(),
    }
}

pub fn encode_element(set: &Set, element: &Element) -> nl::Element {
    let parts: SmallVec<[Bytes; 3]> = element.key.iter().map(value_bytes).collect();
    let key = match parts.as_slice() {
        [one] => one.clone(),
        _ => nl::concat(&parts.iter().map(Bytes::as_slice).collect::<SmallVec<[&[u8]; 3]>>()),
    };
    debug_assert_eq!(element.key.len(), set.key.len());
    match &element.data {
        Some(ElementData::Verdict(v)) => nl::Element::with_data(key, Data::Verdict(encode_verdict(v))),
        Some(ElementData::Endpoint { address, port }) => {
            let data = nl::concat(&[&addr_bytes(*address), &port.to_be_bytes()]);
            nl::Element::with_data(key, Data::Value(data))
        }
        None => nl::Element::new(key),
    }
}

/// A chain's name and the kernel handles of its rules, in rule order.
pub type ChainHandles = (String, Vec<u64>);

/// Our table as read from the kernel, with the handle of every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedTable {
    pub table: Table,
    pub handles: Vec<ChainHandles>,
}

/// Reads a dumped table back into the model, its sets already decoded by
/// [`decode_set_elements`] as they were read (`Conn::read_table_config_with`).
/// A rule this module did not write decodes to an empty rule carrying its
/// reason as a comment: it never equals a desired rule, so the diff replaces it.
pub fn decode_table(family: Family, state: nl::TableState<Arc<Set>>) -> DecodedTable {
    let (chains, handles) = decode_chains(family, &state.chains, &state.rules);
    let sets = state.sets.into_iter().map(|(_, set)| set).collect();
    DecodedTable { table: Table { family, name: TABLE_NAME.into(), sets, chains }, handles }
}

/// A set of our table and its elements, as the model has them.
pub fn decode_set_elements(family: Family, set: &nl::Set, elements: Vec<nl::Element>) -> Arc<Set> {
    Arc::new(decode_set(family, set, elements))
}

/// The chains, with their rules and their rules' handles. The rules come chain
/// by chain, in the order of the chains. At 10k services the table holds 12k
/// chains, so the two halves decode on two threads.
fn decode_chains(family: Family, chains: &[nl::Chain], rules: &[nl::Rule]) -> (Vec<Arc<Chain>>, Vec<ChainHandles>) {
    let mut rest = rules;
    let of_chains: Vec<(&nl::Chain, &[nl::Rule])> = chains
        .iter()
        .map(|c| {
            let (of_chain, after) = rest.split_at(rest.iter().take_while(|r| r.chain == c.name).count());
            rest = after;
            (c, of_chain)
        })
        .collect();
    let decode = |part: &[(&nl::Chain, &[nl::Rule])]| -> Vec<(Arc<Chain>, ChainHandles)> {
        part.iter()
            .map(|(c, of_chain)| {
                let chain = Arc::new(Chain {
                    name: c.name.clone(),
                    hook: c.base.as_ref().map(decode_hook),
                    rules: of_chain.iter().map(|r| decode_rule(family, r)).collect(),
                });
                (chain, (c.name.clone(), of_chain.iter().map(|r| r.handle.unwrap_or_default()).collect()))
            })
            .collect()
    };
    let (first, second) = of_chains.split_at(of_chains.len() / 2);
    let (first, second) = std::thread::scope(|s| {
        // Should no thread start, this one decodes both halves.
        let started = std::thread::Builder::new().spawn_scoped(s, || decode(first));
        let second = decode(second);
        let first = match started {
            Ok(handle) => handle.join().expect("decoding rules panicked"),
            Err(_) => decode(first),
        };
        (first, second)
    });
    first.into_iter().chain(second).unzip()
}

fn decode_hook(b: &nl::BaseChain) -> BaseHook {
    BaseHook {
        kind: match b.kind {
            nl::ChainType::Filter => ChainKind::Filter,
            nl::ChainType::Nat => ChainKind::Nat,
        },
        hook: match b.hook {
            nl::Hook::Prerouting => Hook::Prerouting,
            nl::Hook::Input => Hook::Input,
            nl::Hook::Forward => Hook::Forward,
            nl::Hook::Output => Hook::Output,
            nl::Hook::Postrouting => Hook::Postrouting,
        },
        priority: b.priority,
    }
}

fn decode_set(family: Family, set: &nl::Set, elements: Vec<nl::Element>) -> Set {
    let mut key: Vec<KeyType> = set
        .key
        .iter()
        .filter_map(|k| match k {
            nl::KeyType::Ipv4Addr => Some(KeyType::Ipv4Addr),
            nl::KeyType::Ipv6Addr => Some(KeyType::Ipv6Addr),
            nl::KeyType::InetProto => Some(KeyType::InetProto),
            nl::KeyType::InetService => Some(KeyType::InetService),
            nl::KeyType::Integer => Some(KeyType::Numgen),
            nl::KeyType::Mark => None,
        })
        .collect();
    let data = match &set.data {
        None => None,
        Some(nl::SetData::Verdict) => Some(MapData::Verdict),
        Some(nl::SetData::Value(types)) if *types == endpoint_data(family) => Some(MapData::Endpoint),
        // Not a map we write: without a key it equals no declared set, so the
        // diff recreates it.
        Some(nl::SetData::Value(_)) => {
            key.clear();
            Some(MapData::Verdict)
        }
    };
    let dynamic_timeout = if set.flags.dynamic { set.timeout } else { None };
    let elements = if dynamic_timeout.is_some() {
        Vec::new()
    } else {
        elements.into_iter().filter_map(|e| decode_element(family, &key, e)).collect()
    };
    Set { name: set.name.clone(), key, data, dynamic_timeout, comment: set.comment.clone(), elements }
}

/// Takes `e` apart: a verdict's chain name moves into the decoded element.
fn decode_element(family: Family, key: &[KeyType], e: nl::Element) -> Option<Element> {
    let concatenated = key.len() > 1;
    let mut bytes = e.key.as_slice();
    let mut values = svcnft_compiler::ruleset::Key::new();
    for k in key {
        let len = match k {
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
            KeyType::Numgen => 4,
        };
        let field = bytes.get(..len)?;
        values.push(match k {
            KeyType::Ipv4Addr | KeyType::Ipv6Addr => Value::Addr(bytes_addr(family, field)?),
            KeyType::InetProto => Value::Proto(protocol(field[0])?),
            KeyType::InetService => Value::Port(u16::from_be_bytes([field[0], field[1]])),
            KeyType::Numgen => Value::Index(u32::from_ne_bytes(field.try_into().ok()?)),
        });
        let step = if concatenated { len.next_multiple_of(4) } else { len };
        bytes = bytes.get(step.min(bytes.len())..)?;
    }
    let data = match e.data {
        Some(Data::Verdict(v)) => Some(ElementData::Verdict(decode_verdict(v)?)),
        Some(Data::Value(bytes)) => {
            let len = addr_len(family) as usize;
            let port = bytes.get(len..len + 2)?;
            let address = bytes_addr(family, bytes.get(..len)?)?;
            Some(ElementData::Endpoint { address, port: u16::from_be_bytes([port[0], port[1]]) })
        }
        None => None,
    };
    Some(Element { key: values, data })
}

fn protocol(n: u8) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().find(|p| p.number() == n)
}

fn bytes_addr(family: Family, b: &[u8]) -> Option<IpAddr> {
    match family {
        Family::Ipv4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        Family::Ipv6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
    }
}

/// An address from a (possibly shortened, prefix) comparison.
fn padded_addr(family: Family, b: &[u8]) -> Option<IpAddr> {
    let mut full = vec![0; addr_len(family) as usize];
    full.get_mut(..b.len())?.copy_from_slice(b);
    bytes_addr(family, &full)
}

fn decode_verdict(v: nl::Verdict) -> Option<Verdict> {
    Some(match v {
        nl::Verdict::Accept => Verdict::Accept,
        nl::Verdict::Drop => Verdict::Drop,
        nl::Verdict::Return => Verdict::Return,
        nl::Verdict::Jump(c) => Verdict::Jump(c),
        nl::Verdict::Goto(c) => Verdict::Goto(c),
        nl::Verdict::Continue => return None,
    })
}

fn unrecognised(why: &str) -> Rule {
    Rule::new(Vec::new(), Vec::new()).with_comment(format!("unrecognised rule: {why}"))
}

fn decode_rule(family: Family, rule: &nl::Rule) -> Rule {
    match (RuleDecoder { family, exprs: &rule.exprs, at: 0 }).decode() {
        Some((matches, statements)) => Rule { matches, statements, comment: rule.comment.clone() },
        None => unrecognised(&format!("{:?}", rule.exprs)),
    }
}

/// A packet value loaded into a register, before what uses it is known.
#[derive(Clone, Copy)]
enum Loaded {
    Field(Field, u32),
    CtState,
    CtStatus,
    Mark,
    Fib(AddrField),
    /// A draw: modulus and offset.
    Numgen(u32, u32),
}

struct RuleDecoder<'a> {
    family: Family,
    exprs: &'a [Expr],
    at: usize,
}

impl<'a> RuleDecoder<'a> {
    fn next(&mut self) -> Option<&'a Expr> {
        let e = self.exprs.get(self.at)?;
        self.at += 1;
        Some(e)
    }

    fn peek(&self) -> Option<&'a Expr> {
        self.exprs.get(self.at)
    }

    fn loaded(&self, e: &Expr) -> Option<Loaded> {
        let family = self.family;
        Some(match e {
            Expr::Payload { base: PayloadBase::Network, offset, len, .. } => {
                let field = if *offset == addr_offset(family, AddrField::Saddr) {
                    Field::Saddr
                } else if *offset == addr_offset(family, AddrField::Daddr) {
                    Field::Daddr
                } else {
                    return None;
                };
                Loaded::Field(field, *len)
            }
            Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, .. } => Loaded::Field(Field::Dport, 2),
            Expr::Meta { key: MetaKey::L4Proto, .. } => Loaded::Field(Field::L4Proto, 1),
            Expr::Meta { key: MetaKey::Mark, .. } => Loaded::Mark,
            Expr::Ct { key: CtKey::State, .. } => Loaded::CtState,
            Expr::Ct { key: CtKey::Status, .. } => Loaded::CtStatus,
            Expr::Fib { result: FibResult::AddrType, flags, .. } => {
                if *flags == nl::fib_flags::SADDR {
                    Loaded::Fib(AddrField::Saddr)
                } else if *flags == nl::fib_flags::DADDR {
                    Loaded::Fib(AddrField::Daddr)
                } else {
                    return None;
                }
            }
            Expr::Numgen { random: true, modulus, offset, .. } => Loaded::Numgen(*modulus, *offset),
            _ => return None,
        })
    }

    fn decode(mut self) -> Option<(Vec<Match>, Vec<Statement>)> {
        let mut matches = Vec::new();
        let mut statements = Vec::new();
        while let Some(e) = self.next() {
            if let Some(first) = self.loaded(e) {
                let mut key = vec![first];
                while let Some(more) = self.peek().and_then(|e| self.loaded(e)) {
                    if !matches!(more, Loaded::Field(..)) {
                        break;
                    }
                    key.push(more);
                    self.at += 1;
                }
                self.after_load(&key, &mut matches, &mut statements)?;
                continue;
            }
            statements.push(match e {
                Expr::Immediate { dreg, data: Data::Verdict(v) } if *dreg == Reg::VERDICT => {
                    Statement::Verdict(decode_verdict(v.clone())?)
                }
                Expr::Immediate { data: Data::Value(addr), .. } => {
                    let Some(Expr::Immediate { data: Data::Value(port), .. }) = self.next() else { return None };
                    let Some(Expr::Nat { kind: nl::NatKind::Dnat, .. }) = self.next() else { return None };
                    let port = u16::from_be_bytes(<[u8; 2]>::try_from(port.as_slice()).ok()?);
                    Statement::Dnat { address: bytes_addr(self.family, addr)?, port }
                }
                Expr::Masq { .. } => Statement::Masquerade,
                Expr::Reject(_) => Statement::Reject,
                _ => return None,
            });
        }
        Some((matches, statements))
    }

    fn fields(key: &[Loaded]) -> Option<Vec<Field>> {
        key.iter()
            .map(|l| match l {
                Loaded::Field(f, _) => Some(*f),
                _ => None,
            })
            .collect()
    }

    fn after_load(&mut self, key: &[Loaded], matches: &mut Vec<Match>, statements: &mut Vec<Statement>) -> Option<()> {
        let next = self.next()?.clone();
        match next {
            Expr::Lookup { set, dreg: None, invert, .. } => {
                matches.push(Match::InSet { key: Self::fields(key)?, set, negate: invert })
            }
            Expr::Lookup { set, dreg: Some(d), .. } if d == Reg::VERDICT => {
                statements.push(Statement::Vmap { key: Self::fields(key)?, map: set })
            }
            Expr::Lookup { set, dreg: Some(_), .. } => {
                let [Loaded::Numgen(modulus, offset)] = *key else { return None };
                let Some(Expr::Nat { kind: nl::NatKind::Dnat, .. }) = self.next() else { return None };
                statements.push(Statement::DnatMap { modulus, offset, map: set })
            }
            Expr::Dynset { op: DynsetOp::Update, set, .. } => {
                statements.push(Statement::Update { set, key: Self::fields(key)? })
            }
            Expr::Cmp { op, data, .. } => matches.push(self.compare(key, op, &data, None)?),
            Expr::Bitwise { mask, xor, .. } => {
                if let [Loaded::Mark] = key {
                    if matches!(self.peek(), Some(Expr::MetaSet { key: MetaKey::Mark, .. })) {
                        self.at += 1;
                        let mask = u32::from_ne_bytes(<[u8; 4]>::try_from(mask.as_slice()).ok()?);
                        let xor = u32::from_ne_bytes(<[u8; 4]>::try_from(xor.as_slice()).ok()?);
                        statements.push(if mask == u32::MAX {
                            Statement::MarkXor(xor)
                        } else {
                            Statement::MarkOr(xor)
                        });
                        return Some(());
                    }
                }
                let Some(Expr::Cmp { op, data, .. }) = self.next().cloned() else { return None };
                matches.push(self.compare(key, op, &data, Some(&mask))?);
            }
            _ => return None,
        }
        Some(())
    }

    fn compare(&self, key: &[Loaded], op: CmpOp, data: &[u8], mask: Option<&[u8]>) -> Option<Match> {
        let [loaded] = key else { return None };
        let word = || data.try_into().ok().map(u32::from_ne_bytes);
        let mask_word = || mask.and_then(|m| m.try_into().ok()).map(u32::from_ne_bytes);
        Some(match (*loaded, op) {
            (Loaded::CtState, CmpOp::Neq) if mask_word() == Some(CT_STATE_NEW) && word() == Some(0) => {
                Match::CtStateNew
            }
            (Loaded::CtStatus, CmpOp::Neq) if mask_word() == Some(CT_STATUS_DNAT) && word() == Some(0) => {
                Match::CtStatusDnat
            }
            (Loaded::Mark, CmpOp::Eq) if word() == Some(0) => Match::MarkClear(mask_word()?),
            (Loaded::Fib(dir), CmpOp::Eq) if word() == Some(RTN_LOCAL) && mask.is_none() => Match::FibLocal(dir),
            (Loaded::Numgen(modulus, 0), CmpOp::Eq) if mask.is_none() => Match::Numgen { modulus, value: word()? },
            (Loaded::Field(field, len), CmpOp::Eq | CmpOp::Neq) => {
                let negate = op == CmpOp::Neq;
                let value = match field {
                    Field::L4Proto => Value::Proto(protocol(*data.first()?)?),
                    Field::Dport => Value::Port(u16::from_be_bytes(data.try_into().ok()?)),
                    Field::Saddr | Field::Daddr => {
                        let full = addr_len(self.family);
                        if len == full && mask.is_none() {
                            Value::Addr(bytes_addr(self.family, data)?)
                        } else {
                            let prefix = match mask {
                                Some(m) => m.iter().map(|b| b.count_ones()).sum::<u32>(),
                                None => len * 8,
                            };
                            Value::Net(IpNet::new(padded_addr(self.family, data)?, prefix as u8).ok()?)
                        }
                    }
                };
                Match::Cmp { field, negate, value }
            }
            _ => return None,
        })
    }
}
