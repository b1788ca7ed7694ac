//! The packet tracer: an interpreter of a compiled [`Ruleset`] for the first packet
//! of a new connection. It reads only the rules we emit, never the policy, so what it
//! predicts is what the kernel would do with them — a lowering bug shows up here.
//!
//! Random load balancing is not sampled: every `numgen` match forks the evaluation
//! into the branch where it holds and the one where it does not, so a trace lists
//! every endpoint the packet can reach.
//!
//! The command line parses `--to` with [`parse_destination`] and `--proto` with
//! [`parse_protocol`], builds a [`Packet`] (which refuses mixed families), calls
//! [`trace`] on the compiled ruleset, and prints the [`Trace`] with `Display` or
//! as JSON with serde.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::policy::{Family, Node, Protocol};
use crate::render::{RuleText, VerdictText};
use crate::ruleset::{
    AddrField, Chain, ChainKind, Element, ElementData, Field, Hook, Match, Rule, Ruleset, Set, Statement, Table, Value,
    Verdict,
};

/// Why a packet cannot be traced as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("source {from} and destination {to} are of different address families")]
    FamilyMismatch { from: IpAddr, to: SocketAddr },
    #[error("invalid destination `{0}`: expected ADDR:PORT, or [ADDR]:PORT for IPv6")]
    Destination(String),
    #[error("unknown protocol `{0}`: expected tcp, udp or sctp")]
    Protocol(String),
    #[error("invalid source `{0}`: expected an IPv4 or IPv6 address")]
    Source(String),
}

/// Parses a source address.
pub fn parse_source(text: &str) -> Result<IpAddr, TraceError> {
    text.parse().map_err(|_| TraceError::Source(text.to_string()))
}

/// Parses a destination: `ADDR:PORT`, or `[ADDR]:PORT` for IPv6.
pub fn parse_destination(text: &str) -> Result<SocketAddr, TraceError> {
    text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0).ok_or_else(|| TraceError::Destination(text.to_string()))
}

/// Parses `tcp`, `udp` or `sctp`.
pub fn parse_protocol(text: &str) -> Result<Protocol, TraceError> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.as_str() == text)
        .ok_or_else(|| TraceError::Protocol(text.to_string()))
}

/// The first packet of a new connection. Source and destination share a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Packet {
    from: IpAddr,
    to: SocketAddr,
    protocol: Protocol,
}

impl Packet {
    pub fn new(from: IpAddr, to: SocketAddr, protocol: Protocol) -> Result<Packet, TraceError> {
        if Family::of(from) != Family::of(to.ip()) {
            return Err(TraceError::FamilyMismatch { from, to });
        }
        Ok(Packet { from, to, protocol })
    }

    pub fn from(&self) -> IpAddr {
        self.from
    }

    pub fn to(&self) -> SocketAddr {
        self.to
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn family(&self) -> Family {
        Family::of(self.from)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceOptions {
    /// A returning client: its source is already in this endpoint's session-affinity
    /// sets (every dynamic set a rule fills just before DNAT to it). Otherwise those
    /// sets are empty, as for a client never seen before.
    pub returning_to: Option<SocketAddr>,
}

/// What svcnft's rules do to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceVerdict {
    /// The destination is rewritten to an endpoint.
    Dnat,
    /// Neither rewritten nor dropped.
    Pass,
    Drop,
    /// ICMP port unreachable.
    Reject,
}

/// One rule that applied on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub hook: Hook,
    pub chain: String,
    /// The rule as `nft` prints it, comment included.
    pub rule: String,
    pub comment: Option<String>,
    /// What a map lookup produced: the verdict of a dispatch, the endpoint of a
    /// `dnat … map`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
}

/// One way the packet can go (the rules fork on every `numgen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracePath {
    pub verdict: TraceVerdict,
    pub endpoint: Option<SocketAddr>,
    pub masquerade: bool,
    pub source_seen: Option<IpAddr>,
    pub path: Vec<Step>,
}

/// Everything that can happen to one packet: the `trace --json` contract, plus the
/// packet itself and every path in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub from: IpAddr,
    pub to: SocketAddr,
    pub protocol: Protocol,
    /// `dnat` when any path rewrites the destination; otherwise the paths' verdict
    /// (the strictest one should they ever disagree).
    pub verdict: TraceVerdict,
    /// Every possible DNAT target, sorted as the contract's strings sort
    /// (`10.1.0.10:80` before `10.1.0.9:80`): what a reader of the JSON checks.
    pub endpoints: Vec<SocketAddr>,
    /// Masqueraded on some path.
    pub masquerade: bool,
    /// The client address the endpoint sees (on the first path with the verdict).
    pub source_seen: Option<IpAddr>,
    /// The rules taken on the first path with the verdict.
    pub path: Vec<Step>,
    pub paths: Vec<TracePath>,
}

/// Traces the first packet of a new connection through the node's ruleset.
pub fn trace(ruleset: &Ruleset, node: &Node, packet: &Packet, options: &TraceOptions) -> Trace {
    Tracer::new(ruleset).trace(node, packet, options)
}

/// A ruleset prepared for tracing many packets: chains and sets indexed by name,
/// elements of sets without prefixes by key, base chains by hook in priority
/// order. A packet then costs what its path costs; scanning a 10k-service table
/// for every jump and lookup took 10 ms a packet.
pub struct Tracer<'a> {
    base_chains: Vec<(&'a Table, &'a Chain, Hook, ChainKind, i32)>,
    chains: HashMap<(Family, &'a str, &'a str), &'a Chain>,
    sets: HashMap<(Family, &'a str, &'a str), &'a Set>,
    /// The elements of each set whose keys are all exact values (no prefixes).
    exact: HashMap<(Family, &'a str, &'a str), HashMap<&'a [Value], &'a Element>>,
    tables: &'a [Table],
}

impl<'a> Tracer<'a> {
    pub fn new(ruleset: &'a Ruleset) -> Tracer<'a> {
        let tables = &ruleset.tables;
        let mut base_chains: Vec<_> = tables
            .iter()
            .flat_map(|t| t.chains.iter().map(move |c| (t, &**c)))
            .filter_map(|(t, c)| c.hook.map(|h| (t, c, h.hook, h.kind, h.priority)))
            .collect();
        base_chains.sort_by_key(|(_, _, _, _, priority)| *priority);
        let chains = tables
            .iter()
            .flat_map(|t| t.chains.iter().map(move |c| ((t.family, t.name.as_str(), c.name.as_str()), &**c)))
            .collect();
        let sets = tables
            .iter()
            .flat_map(|t| t.sets.iter().map(move |s| ((t.family, t.name.as_str(), s.name.as_str()), &**s)))
            .collect();
        let exact = tables
            .iter()
            .flat_map(|t| t.sets.iter().map(move |s| (t, s)))
            .filter(|(_, s)| s.elements.iter().flat_map(|e| &e.key).all(|v| !matches!(v, Value::Net(_))))
            .map(|(t, s)| {
                let index = s.elements.iter().map(|e| (e.key.as_slice(), e)).collect();
                ((t.family, t.name.as_str(), s.name.as_str()), index)
            })
            .collect();
        Tracer { base_chains, chains, sets, exact, tables }
    }

    /// Traces the first packet of a new connection through the node's ruleset.
    pub fn trace(&self, node: &Node, packet: &Packet, options: &TraceOptions) -> Trace {
        let family = packet.family();
        let affinity = match options.returning_to {
            None => BTreeSet::new(),
            Some(target) => self
                .tables
                .iter()
                .filter(|t| t.family == family)
                .flat_map(|t| t.chains.iter().flat_map(|c| &c.rules).map(move |r| (t, r)))
                .filter_map(|(t, rule)| {
                    filled_before_dnat_to(rule, target).map(|set| (t.name.clone(), set.to_string()))
                })
                .collect(),
        };
        let interpreter = Interpreter { family, node, tracer: self, affinity };
        let start = State {
            saddr: packet.from,
            daddr: packet.to.ip(),
            dport: packet.to.port(),
            protocol: packet.protocol,
            mark: 0,
            dnat: None,
            dnat_decided: false,
            masqueraded: false,
            steps: Vec::new(),
        };
        let mut ended = Vec::new();
        if interpreter.is_local(packet.from) {
            let sent = interpreter.hook(Hook::Output, vec![start], &mut ended);
            let sent = interpreter.hook(Hook::Postrouting, sent, &mut ended);
            // Locally delivered packets loop back through prerouting and input; NAT is
            // already bound for the connection, so only filter chains see them again.
            let (looped, left): (Vec<State>, Vec<State>) =
                sent.into_iter().partition(|s| interpreter.is_local(s.daddr));
            let looped = interpreter.hook(Hook::Prerouting, looped, &mut ended);
            let delivered = interpreter.hook(Hook::Input, looped, &mut ended);
            ended.extend(delivered.into_iter().chain(left).map(passed));
        } else {
            let arrived = interpreter.hook(Hook::Prerouting, vec![start], &mut ended);
            let (local, forwarded): (Vec<State>, Vec<State>) =
                arrived.into_iter().partition(|s| interpreter.is_local(s.daddr));
            let delivered = interpreter.hook(Hook::Input, local, &mut ended);
            let forwarded = interpreter.hook(Hook::Forward, forwarded, &mut ended);
            let forwarded = interpreter.hook(Hook::Postrouting, forwarded, &mut ended);
            ended.extend(delivered.into_iter().chain(forwarded).map(passed));
        }
        let paths: Vec<TracePath> =
            ended.into_iter().map(|(state, verdict)| path_outcome(node, state, verdict)).collect();
        merge(packet, paths)
    }

    /// The element of `set` whose key matches the packet's `key`.
    fn element(&self, table: &Table, set: &'a Set, key: &[Value]) -> Option<&'a Element> {
        match self.exact.get(&(table.family, table.name.as_str(), set.name.as_str())) {
            Some(index) => index.get(key).copied(),
            None => set.elements.iter().find(|e| key_matches(key, &e.key)),
        }
    }
}

/// The dynamic set a rule fills with the source just before it DNATs to `target`:
/// that endpoint's affinity set.
fn filled_before_dnat_to(rule: &Rule, target: SocketAddr) -> Option<&str> {
    let dnats_to_target = rule
        .statements
        .iter()
        .any(|s| matches!(s, Statement::Dnat { address, port } if SocketAddr::new(*address, *port) == target));
    rule.statements.iter().find_map(|s| match s {
        Statement::Update { set, key } if dnats_to_target && key == &[Field::Saddr] => Some(set.as_str()),
        _ => None,
    })
}

fn passed(state: State) -> (State, Ending) {
    (state, Ending::Accepted)
}

/// How one path ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Accepted,
    Dropped,
    Rejected,
}

/// The packet as one path has changed it so far.
#[derive(Debug, Clone)]
struct State {
    saddr: IpAddr,
    daddr: IpAddr,
    dport: u16,
    protocol: Protocol,
    mark: u32,
    dnat: Option<SocketAddr>,
    /// The destination NAT of the connection is settled (rewritten or bound to
    /// itself once the dstnat chains of a hook have run): no nat chain sees it again.
    dnat_decided: bool,
    masqueraded: bool,
    steps: Vec<Step>,
}

struct Interpreter<'a> {
    family: Family,
    node: &'a Node,
    tracer: &'a Tracer<'a>,
    /// `(table, set)`: dynamic sets that hold the packet's source.
    affinity: BTreeSet<(String, String)>,
}

/// A position in a chain: the rule to evaluate next.
#[derive(Debug, Clone, Copy)]
struct Frame<'a> {
    chain: &'a Chain,
    next: usize,
}

/// What a rule's statements decide.
enum Next<'a> {
    Continue,
    Accept,
    Drop,
    Reject,
    Return,
    Jump(&'a str),
    Goto(&'a str),
}

impl<'a> Interpreter<'a> {
    fn chain(&self, table: &Table, name: &str) -> Option<&'a Chain> {
        self.tracer.chains.get(&(table.family, table.name.as_str(), name)).copied()
    }

    fn set(&self, table: &Table, name: &str) -> Option<&'a Set> {
        self.tracer.sets.get(&(table.family, table.name.as_str(), name)).copied()
    }

    /// Every base chain of one hook, in priority order; drops and rejects end their
    /// path in `ended`, the rest go on.
    fn hook(&self, hook: Hook, states: Vec<State>, ended: &mut Vec<(State, Ending)>) -> Vec<State> {
        let chains = self
            .tracer
            .base_chains
            .iter()
            .filter(|(t, _, h, _, _)| t.family == self.family && *h == hook)
            .map(|&(t, c, _, kind, priority)| (t, c, kind, priority));
        let destination_nat = matches!(hook, Hook::Prerouting | Hook::Output);
        let mut states = states;
        for (table, chain, kind, _) in chains {
            let mut going = Vec::new();
            for state in states {
                let skip = kind == ChainKind::Nat
                    && if destination_nat { state.dnat_decided || state.dnat.is_some() } else { state.masqueraded };
                if skip {
                    going.push(state);
                    continue;
                }
                for (state, ending) in self.base_chain(table, chain, hook, state) {
                    match ending {
                        Ending::Accepted => going.push(state),
                        _ => ended.push((state, ending)),
                    }
                }
            }
            states = going;
        }
        if destination_nat {
            states.iter_mut().for_each(|s| s.dnat_decided = true);
        }
        states
    }

    /// Runs one base chain: jump pushes a frame, goto replaces the current one,
    /// return (or a chain's end) pops; the base chain's end is its accept policy.
    fn base_chain(&self, table: &'a Table, base: &'a Chain, hook: Hook, state: State) -> Vec<(State, Ending)> {
        let mut done = Vec::new();
        let mut work = vec![(state, vec![Frame { chain: base, next: 0 }])];
        while let Some((mut state, mut frames)) = work.pop() {
            loop {
                let Some(frame) = frames.last_mut() else {
                    done.push((state, Ending::Accepted));
                    break;
                };
                let chain = frame.chain;
                let Some(rule) = chain.rules.get(frame.next) else {
                    frames.pop();
                    continue;
                };
                frame.next += 1;
                let mut applies = true;
                for m in &rule.matches {
                    match self.holds(table, m, &state) {
                        Some(true) => {}
                        Some(false) => {
                            applies = false;
                            break;
                        }
                        // A random draw: the branch where it fails goes on after this rule.
                        None => work.push((state.clone(), frames.clone())),
                    }
                }
                if !applies {
                    continue;
                }
                let before =
                    rule.statements.iter().any(|s| matches!(s, Statement::DnatMap { .. })).then(|| state.clone());
                let mut forks = Vec::new();
                let next = self.execute(table, chain, hook, rule, &mut state, &mut forks);
                for fork in forks {
                    match (fork, &before) {
                        (Some(dnat), _) => done.push((dnat, Ending::Accepted)),
                        (None, Some(before)) => work.push((before.clone(), frames.clone())),
                        (None, None) => {}
                    }
                }
                match next {
                    Next::Continue => {}
                    Next::Accept => {
                        done.push((state, Ending::Accepted));
                        break;
                    }
                    Next::Drop => {
                        done.push((state, Ending::Dropped));
                        break;
                    }
                    Next::Reject => {
                        done.push((state, Ending::Rejected));
                        break;
                    }
                    Next::Return => {
                        frames.pop();
                    }
                    Next::Jump(name) => frames.extend(self.chain(table, name).map(|chain| Frame { chain, next: 0 })),
                    Next::Goto(name) => {
                        frames.pop();
                        frames.extend(self.chain(table, name).map(|chain| Frame { chain, next: 0 }));
                    }
                }
            }
        }
        done
    }

    /// Runs a rule's statements and records it on the path. A `dnat … map` draws
    /// one of several keys: `state` takes the last that has an element, and each
    /// other draw is a fork — the DNATed state, or one `None` for the keys without
    /// element, after which the rule did not match.
    fn execute(
        &self,
        table: &'a Table,
        chain: &Chain,
        hook: Hook,
        rule: &'a Rule,
        state: &mut State,
        forks: &mut Vec<Option<State>>,
    ) -> Next<'a> {
        let mut step = Step {
            hook,
            chain: chain.name.clone(),
            rule: RuleText(self.family, rule).to_string(),
            comment: rule.comment.clone(),
            lookup: None,
        };
        let mut next = Next::Continue;
        // A dispatch rule whose map has no element for the packet changes nothing:
        // it is left off the path.
        let mut effective = false;
        for statement in &rule.statements {
            effective |= !matches!(statement, Statement::Vmap { .. });
            match statement {
                Statement::MarkOr(bits) => state.mark |= bits,
                Statement::MarkXor(bits) => state.mark ^= bits,
                // Affinity entries matter to later connections only.
                Statement::Update { .. } => {}
                Statement::Vmap { key, map } => {
                    let verdict = self.set(table, map).and_then(|set| {
                        let key = self.key(key, state);
                        self.tracer.element(table, set, &key).and_then(Element::verdict_data)
                    });
                    if let Some(verdict) = verdict {
                        effective = true;
                        step.lookup = Some(VerdictText(verdict).to_string());
                        next = next_of(verdict);
                        break;
                    }
                }
                Statement::Dnat { address, port } => {
                    dnat(state, SocketAddr::new(*address, *port));
                    next = Next::Accept;
                    break;
                }
                Statement::DnatMap { modulus, offset, map } => {
                    let set = self.set(table, map);
                    let draws: Vec<Option<SocketAddr>> = (*offset..offset.saturating_add(*modulus))
                        .map(|key| {
                            let element = set.and_then(|set| self.tracer.element(table, set, &[Value::Index(key)]));
                            match element?.data {
                                Some(ElementData::Endpoint { address, port }) => Some(SocketAddr::new(address, port)),
                                _ => None,
                            }
                        })
                        .collect();
                    // The last draw goes on as `state`, so that paths end in key order.
                    let last = draws.iter().rposition(Option::is_some);
                    let mut chosen = None;
                    // Keys without an element: the rule does not match, one path
                    // whatever their number; with no element at all, `state` goes on.
                    if last.is_some() && draws.iter().any(Option::is_none) {
                        forks.push(None);
                    }
                    for (i, draw) in draws.into_iter().enumerate() {
                        match draw {
                            Some(target) if Some(i) == last => chosen = Some(target),
                            Some(target) => {
                                let mut fork = state.clone();
                                let mut step = step.clone();
                                step.lookup = Some(target.to_string());
                                fork.steps.push(step);
                                dnat(&mut fork, target);
                                forks.push(Some(fork));
                            }
                            None => {}
                        }
                    }
                    let Some(target) = chosen else {
                        return Next::Continue;
                    };
                    step.lookup = Some(target.to_string());
                    dnat(state, target);
                    next = Next::Accept;
                    break;
                }
                Statement::Masquerade => {
                    state.masqueraded = true;
                    next = Next::Accept;
                    break;
                }
                Statement::Reject => {
                    next = Next::Reject;
                    break;
                }
                Statement::Verdict(verdict) => {
                    next = next_of(verdict);
                    break;
                }
            }
        }
        if effective || rule.statements.is_empty() {
            state.steps.push(step);
        }
        next
    }

    /// Whether a match holds; `None` for a random draw, which can go either way.
    fn holds(&self, table: &Table, m: &Match, state: &State) -> Option<bool> {
        Some(match m {
            Match::Cmp { field, negate, value } => value_matches(&self.field(*field, state), value) != *negate,
            Match::InSet { key, set, negate } => {
                let found = match self.set(table, set) {
                    Some(s) if s.dynamic_timeout.is_some() => {
                        self.affinity.contains(&(table.name.clone(), s.name.clone()))
                    }
                    Some(s) => {
                        let key = self.key(key, state);
                        self.tracer.element(table, s, &key).is_some()
                    }
                    None => false,
                };
                found != *negate
            }
            Match::CtStateNew => true,
            Match::CtStatusDnat => state.dnat.is_some(),
            Match::FibLocal(AddrField::Saddr) => self.is_local(state.saddr),
            Match::FibLocal(AddrField::Daddr) => self.is_local(state.daddr),
            Match::Numgen { .. } => return None,
            Match::MarkClear(mask) => state.mark & mask == 0,
        })
    }

    /// An address of the node (its pod networks' gateways included), or
    /// loopback: what `fib ... type local` reports.
    fn is_local(&self, addr: IpAddr) -> bool {
        addr.is_loopback()
            || self.node.all_addresses().any(|a| a == addr)
            || self.node.pod_cidrs.iter().any(|net| gateway(net) == addr)
    }

    fn field(&self, field: Field, state: &State) -> Value {
        match field {
            Field::Saddr => Value::Addr(state.saddr),
            Field::Daddr => Value::Addr(state.daddr),
            Field::L4Proto => Value::Proto(state.protocol),
            Field::Dport => Value::Port(state.dport),
        }
    }

    fn key(&self, fields: &[Field], state: &State) -> Vec<Value> {
        fields.iter().map(|f| self.field(*f, state)).collect()
    }
}

fn dnat(state: &mut State, target: SocketAddr) {
    state.daddr = target.ip();
    state.dport = target.port();
    state.dnat = Some(target);
}

fn next_of(verdict: &Verdict) -> Next<'_> {
    match verdict {
        Verdict::Accept => Next::Accept,
        Verdict::Drop => Next::Drop,
        Verdict::Return => Next::Return,
        Verdict::Jump(chain) => Next::Jump(chain),
        Verdict::Goto(chain) => Next::Goto(chain),
    }
}

/// A packet value against a rule or element constant; prefixes compare under mask.
fn value_matches(packet: &Value, constant: &Value) -> bool {
    match (packet, constant) {
        (Value::Addr(a), Value::Net(net)) => net.contains(a),
        _ => packet == constant,
    }
}

fn key_matches(packet: &[Value], element: &[Value]) -> bool {
    packet.len() == element.len() && packet.iter().zip(element).all(|(p, e)| value_matches(p, e))
}

fn path_outcome(node: &Node, state: State, ending: Ending) -> TracePath {
    let verdict = match (ending, state.dnat) {
        (Ending::Dropped, _) => TraceVerdict::Drop,
        (Ending::Rejected, _) => TraceVerdict::Reject,
        (Ending::Accepted, Some(_)) => TraceVerdict::Dnat,
        (Ending::Accepted, None) => TraceVerdict::Pass,
    };
    let endpoint = state.dnat.filter(|_| verdict == TraceVerdict::Dnat);
    let source_seen = endpoint.map(|e| if state.masqueraded { address_toward(node, e.ip()) } else { state.saddr });
    TracePath { verdict, endpoint, masquerade: state.masqueraded, source_seen, path: state.steps }
}

/// The node's source address toward a destination, as masquerade picks it: the
/// gateway of the pod network it lies in, else the node's primary address.
fn address_toward(node: &Node, destination: IpAddr) -> IpAddr {
    let family = Family::of(destination);
    let gateway = node.pod_cidrs.iter().find(|net| net.contains(&destination)).map(gateway);
    gateway.or_else(|| node.primary(family)).unwrap_or(destination)
}

/// The node's address on a pod network: its first address.
fn gateway(net: &IpNet) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

fn merge(packet: &Packet, paths: Vec<TracePath>) -> Trace {
    let verdict = paths.iter().map(|p| p.verdict).min().unwrap_or(TraceVerdict::Pass);
    let verdict = if verdict == TraceVerdict::Dnat {
        verdict
    } else {
        paths.iter().map(|p| p.verdict).max().unwrap_or(TraceVerdict::Pass)
    };
    let mut endpoints: Vec<SocketAddr> = paths.iter().filter_map(|p| p.endpoint).collect();
    endpoints.sort_by_cached_key(SocketAddr::to_string);
    endpoints.dedup();
    let first = paths.iter().find(|p| p.verdict == verdict);
    Trace {
        from: packet.from,
        to: packet.to,
        protocol: packet.protocol,
        verdict,
        endpoints,
        masquerade: paths.iter().any(|p| p.masquerade),
        source_seen: first.and_then(|p| p.source_seen),
        path: first.map(|p| p.path.clone()).unwrap_or_default(),
        paths,
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let many = self.paths.len() > 1;
        for (i, path) in self.paths.iter().enumerate() {
            if many {
                let endpoint = path.endpoint.map(|e| format!(" to {e}")).unwrap_or_default();
                writeln!(f, "path {} of {}: {}{endpoint}", i + 1, self.paths.len(), verdict_word(path.verdict))?;
            }
            for step in &path.path {
                write!(f, "  {:<11} {}: {}", hook_word(step.hook), step.chain, step.rule)?;
                match &step.lookup {
                    Some(lookup) => writeln!(f, " => {lookup}")?,
                    None => writeln!(f)?,
                }
            }
        }
        write!(f, "{} -> {}/{}: ", self.from, self.to, self.protocol)?;
        match self.verdict {
            TraceVerdict::Dnat => self.fmt_dnat(f)?,
            TraceVerdict::Pass => write!(f, "passed: svcnft's rules neither rewrite nor drop it")?,
            TraceVerdict::Drop => write!(f, "dropped")?,
            TraceVerdict::Reject => write!(f, "rejected (ICMP port unreachable)")?,
        }
        let others: BTreeSet<&str> =
            self.paths.iter().filter(|p| p.verdict != self.verdict).map(|p| verdict_word(p.verdict)).collect();
        if !others.is_empty() {
            write!(f, "; other paths: {}", others.into_iter().collect::<Vec<_>>().join(", "))?;
        }
        Ok(())
    }
}

impl Trace {
    fn fmt_dnat(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: Vec<String>| items.join(", ");
        match self.endpoints.as_slice() {
            [one] => write!(f, "DNAT to {one}")?,
            many => write!(
                f,
                "DNAT to one of {} endpoints ({})",
                many.len(),
                list(many.iter().map(|e| e.to_string()).collect())
            )?,
        }
        let always = self.paths.iter().filter(|p| p.verdict == TraceVerdict::Dnat).all(|p| p.masquerade);
        f.write_str(match (self.masquerade, always) {
            (false, _) => ", not masqueraded",
            (true, true) => ", masqueraded",
            (true, false) => ", masqueraded on some paths",
        })?;
        let seen: BTreeSet<(SocketAddr, IpAddr)> =
            self.paths.iter().filter_map(|p| Some((p.endpoint?, p.source_seen?))).collect();
        let sources: BTreeSet<IpAddr> = seen.iter().map(|(_, s)| *s).collect();
        match sources.iter().collect::<Vec<_>>().as_slice() {
            [one] => write!(f, "; the endpoint sees {one}"),
            _ => write!(f, "; {}", list(seen.iter().map(|(e, s)| format!("{e} sees {s}")).collect())),
        }
    }
}

fn verdict_word(verdict: TraceVerdict) -> &'static str {
    match verdict {
        TraceVerdict::Dnat => "dnat",
        TraceVerdict::Pass => "pass",
        TraceVerdict::Drop => "drop",
        TraceVerdict::Reject => "reject",
    }
}

fn hook_word(hook: Hook) -> &'static str {
    match hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

#[cfg(test)]
mod tests {
    //! The interpreter's mechanics on hand-built tables, independent of lowering.

    use super::*;
    use crate::ruleset::{BaseHook, MapData, Set, TABLE_NAME};

    fn node() -> Node {
        Node {
            name: "n".into(),
            addresses: vec!["10.0.0.1".parse().expect("address")],
            local_addresses: Vec::new(),
            pod_cidrs: vec!["10.1.0.0/24".parse().expect("prefix")],
            zone: None,
        }
    }

    fn chain(name: &str, hook: Option<(ChainKind, Hook, i32)>, rules: Vec<Rule>) -> Chain {
        let hook = hook.map(|(kind, hook, priority)| BaseHook { kind, hook, priority });
        Chain { name: name.into(), hook, rules }
    }

    fn rule(matches: Vec<Match>, statements: Vec<Statement>, comment: &str) -> Rule {
        Rule::new(matches, statements).with_comment(comment)
    }

    fn verdict(v: Verdict) -> Statement {
        Statement::Verdict(v)
    }

    fn dnat(address: &str, port: u16) -> Statement {
        Statement::Dnat { address: address.parse().expect("address"), port }
    }

    /// A prerouting nat chain that DNATs everything to `address:80`.
    fn dnat_chain(name: &str, priority: i32, address: &str) -> Chain {
        chain(
            name,
            Some((ChainKind::Nat, Hook::Prerouting, priority)),
            vec![rule(vec![], vec![dnat(address, 80)], name)],
        )
    }

    fn run(sets: Vec<Set>, chains: Vec<Chain>, from: &str, to: &str, options: &TraceOptions) -> Trace {
        let chains = chains.into_iter().map(std::sync::Arc::new).collect();
        let sets = sets.into_iter().map(std::sync::Arc::new).collect();
        let table = Table { family: Family::Ipv4, name: TABLE_NAME.into(), sets, chains };
        let ruleset = Ruleset { tables: vec![table] };
        let to = parse_destination(to).expect("destination");
        let packet = Packet::new(from.parse().expect("address"), to, Protocol::Tcp).expect("one family");
        trace(&ruleset, &node(), &packet, options)
    }

    fn comments(path: &[Step]) -> Vec<&str> {
        path.iter().filter_map(|s| s.comment.as_deref()).collect()
    }

    #[test]
    fn goto_does_not_return_to_its_caller() {
        let chains = vec![
            chain(
                "base",
                Some((ChainKind::Filter, Hook::Prerouting, 0)),
                vec![
                    rule(vec![], vec![verdict(Verdict::Jump("a".into()))], "jump a"),
                    rule(vec![], vec![verdict(Verdict::Drop)], "after jump"),
                ],
            ),
            chain(
                "a",
                None,
                vec![
                    rule(vec![], vec![verdict(Verdict::Goto("b".into()))], "goto b"),
                    rule(vec![], vec![verdict(Verdict::Accept)], "after goto"),
                ],
            ),
            chain("b", None, vec![rule(vec![], vec![verdict(Verdict::Return)], "return")]),
        ];
        let trace = run(Vec::new(), chains, "192.0.2.1", "10.0.0.1:80", &TraceOptions::default());
        assert_eq!(trace.verdict, TraceVerdict::Drop);
        assert_eq!(comments(&trace.path), ["jump a", "goto b", "return", "after jump"]);
    }

    #[test]
    fn every_random_draw_forks() {
        let rules = vec![
            rule(vec![Match::Numgen { modulus: 3, value: 0 }], vec![dnat("10.1.0.5", 80)], "first"),
            rule(vec![Match::Numgen { modulus: 2, value: 0 }], vec![dnat("10.2.0.5", 80)], "second"),
            rule(vec![], vec![dnat("10.3.0.5", 80)], "last"),
        ];
        let chains = vec![chain("nat", Some((ChainKind::Nat, Hook::Prerouting, -100)), rules)];
        let trace = run(Vec::new(), chains, "192.0.2.1", "10.9.0.1:80", &TraceOptions::default());
        assert_eq!(trace.verdict, TraceVerdict::Dnat);
        let endpoints: Vec<String> = trace.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(endpoints, ["10.1.0.5:80", "10.2.0.5:80", "10.3.0.5:80"]);
        assert_eq!(trace.paths.len(), 3);
        assert!(!trace.masquerade);
        assert_eq!(trace.source_seen, "192.0.2.1".parse().ok());
    }

    #[test]
    fn masquerade_source_is_the_address_toward_the_endpoint() {
        let chains = vec![
            dnat_chain("nat", -100, "10.1.0.5"),
            chain(
                "snat",
                Some((ChainKind::Nat, Hook::Postrouting, 100)),
                vec![rule(vec![Match::CtStatusDnat], vec![Statement::Masquerade], "masquerade")],
            ),
        ];
        let trace = run(Vec::new(), chains, "192.0.2.1", "10.9.0.1:80", &TraceOptions::default());
        assert!(trace.masquerade);
        assert_eq!(trace.source_seen, "10.1.0.1".parse().ok());
    }

    #[test]
    fn prefixes_compare_under_their_mask_in_concatenated_keys() {
        let set = Set {
            name: "m".into(),
            key: Vec::new(),
            data: Some(MapData::Verdict),
            dynamic_timeout: None,
            comment: None,
            elements: vec![Element::verdict(
                &[Value::Net("10.9.0.0/16".parse().expect("prefix")), Value::Proto(Protocol::Tcp)],
                Verdict::Drop,
            )],
        };
        let dispatch = Statement::Vmap { key: vec![Field::Daddr, Field::L4Proto], map: "m".into() };
        let chains =
            vec![chain("base", Some((ChainKind::Filter, Hook::Prerouting, 0)), vec![rule(vec![], vec![dispatch], "")])];
        let dropped = run(vec![set.clone()], chains.clone(), "192.0.2.1", "10.9.4.4:80", &TraceOptions::default());
        assert_eq!(dropped.verdict, TraceVerdict::Drop);
        assert_eq!(dropped.path[0].lookup.as_deref(), Some("drop"));
        let passed = run(vec![set], chains, "192.0.2.1", "10.8.4.4:80", &TraceOptions::default());
        assert_eq!(passed.verdict, TraceVerdict::Pass);
        assert!(passed.path.is_empty());
    }

    #[test]
    fn nat_is_decided_once_per_hook() {
        let chains = vec![dnat_chain("first", -100, "10.1.0.5"), dnat_chain("second", -50, "10.1.0.6")];
        let trace = run(Vec::new(), chains, "192.0.2.1", "10.9.0.1:80", &TraceOptions::default());
        let endpoints: Vec<String> = trace.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(endpoints, ["10.1.0.5:80"]);
    }

    #[test]
    fn parses_destinations_and_protocols() {
        assert_eq!(parse_destination("[fd00::1]:80").map(|a| a.to_string()), Ok("[fd00::1]:80".to_string()));
        assert_eq!(parse_destination("10.0.0.1:8080").map(|a| a.port()), Ok(8080));
        assert_eq!(parse_protocol("sctp"), Ok(Protocol::Sctp));
        assert_eq!(parse_protocol("udp"), Ok(Protocol::Udp));
    }

    #[test]
    fn a_map_draw_forks_per_key_and_a_key_without_endpoint_falls_through() {
        let endpoint = |key: u32, address: &str| Element::endpoint(key, address.parse().expect("address"), 8080);
        let map = Set {
            name: "endpoints-0".into(),
            key: vec![crate::ruleset::KeyType::Numgen],
            data: Some(MapData::Endpoint),
            dynamic_timeout: None,
            comment: None,
            elements: vec![endpoint(7, "10.1.0.7"), endpoint(9, "10.1.0.9")],
        };
        let draw = Statement::DnatMap { modulus: 3, offset: 7, map: "endpoints-0".into() };
        let chains = vec![chain(
            "nat",
            Some((ChainKind::Nat, Hook::Prerouting, -100)),
            vec![rule(vec![], vec![draw], "draw"), rule(vec![], vec![dnat("10.1.0.99", 80)], "after")],
        )];
        let t = run(vec![map.clone()], chains.clone(), "192.0.2.1", "10.2.0.1:80", &TraceOptions::default());
        let endpoints: Vec<String> =
            t.paths.iter().map(|p| p.endpoint.expect("every path DNATs").to_string()).collect();
        // Keys 7 and 9 in key order; key 8 has no element, so its draw reaches the next rule.
        assert_eq!(endpoints, ["10.1.0.7:8080", "10.1.0.9:8080", "10.1.0.99:80"]);
        assert_eq!(t.paths[0].path[0].lookup.as_deref(), Some("10.1.0.7:8080"));
        assert_eq!(comments(&t.paths[2].path), ["after"]);

        // Two keys without element are one way through; an empty map draws nothing.
        let sparse = Set { elements: vec![endpoint(7, "10.1.0.7")], ..map.clone() };
        let paths = |set: Set| {
            let t = run(vec![set], chains.clone(), "192.0.2.1", "10.2.0.1:80", &TraceOptions::default());
            t.paths.iter().map(|p| p.endpoint.expect("every path DNATs").to_string()).collect::<Vec<_>>()
        };
        assert_eq!(paths(sparse), ["10.1.0.7:8080", "10.1.0.99:80"]);
        assert_eq!(paths(Set { elements: Vec::new(), ..map }), ["10.1.0.99:80"]);
    }
}
