//! The tracer against the kernel: random flows through the lab, each predicted by
//! `trace::trace` over the very ruleset the nodes hold, then sent as real packets. The
//! echo pods tell the endpoint and the source they saw; a drop shows as silence and a
//! reject as a refusal. Every disagreement is a bug in the tracer, the lowering or the lab.
//! Needs root and `ip`/`nft`; skips otherwise, except under `CI=true`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use svcnft_compiler::policy::{Family, Protocol};
use svcnft_compiler::trace::{self, Packet, TraceOptions, TraceVerdict};
use svcnft_compiler::{NodePlan, Policy, Ruleset};
use svcnft_lab::http::{Outcome, Target};
use svcnft_lab::lab::{compile, state_dir, CLIENT4, CLIENT6, ROUTER4, ROUTER6};
use svcnft_lab::Lab;

mod common;
use common::{policy, start};

/// The policies the flows run under, applied one after the other on the live rules.
const POLICIES: [&str; 5] =
    ["tutorial-cluster.svc", "tutorial-local.svc", "tutorial-moved.svc", "features.svc", "masquerade-all.svc"];
const FLOWS_PER_POLICY: usize = 200;
/// Fixed, so that a failure can be replayed; `SVCNFT_DIFF_SEED` explores others.
const SEED: u64 = 0x5eed_5e7c;
/// Silence this long is a drop; an answer that was only slow is asked again, patiently.
const DROP_WAIT: Duration = Duration::from_millis(500);
const PATIENT_WAIT: Duration = Duration::from_secs(3);
const PARALLEL: usize = 16;

/// A small deterministic generator (splitmix64): reproducible flows without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// Where a packet starts: a namespace and its address of each family, and the node whose
/// rules it meets first (`None`: it enters through the router).
#[derive(Debug, Clone)]
struct Source {
    name: String,
    ns: String,
    v4: IpAddr,
    v6: IpAddr,
    first_node: Option<String>,
}

impl Source {
    fn address(&self, family: Family) -> IpAddr {
        if family == Family::Ipv4 {
            self.v4
        } else {
            self.v6
        }
    }
}

fn sources(lab: &Lab) -> Vec<Source> {
    let source = |name: &str, ns: &str, v4: IpAddr, v6: IpAddr, first_node: Option<&str>| Source {
        name: name.into(),
        ns: ns.into(),
        v4,
        v6,
        first_node: first_node.map(String::from),
    };
    let mut sources = vec![
        source("client", lab.client(), CLIENT4.into(), CLIENT6.into(), None),
        source("router", lab.router(), ROUTER4.into(), ROUTER6.into(), None),
    ];
    sources.extend(lab.nodes().iter().map(|n| source(&n.name, &n.ns, n.ipv4.into(), n.ipv6.into(), Some(&n.name))));
    sources.extend(lab.pods().iter().map(|p| source(&p.name, &p.ns, p.ipv4.into(), p.ipv6.into(), Some(&p.node))));
    sources
}

/// Every destination worth a packet under a policy: each service's addresses and node
/// ports, plus what no service owns (an unknown port, an unallocated service address, a
/// node port nobody uses).
fn destinations(policy: &Policy) -> Vec<(SocketAddr, Protocol)> {
    let mut out = Vec::new();
    for svc in &policy.services {
        let addresses: Vec<IpAddr> = svc
            .cluster_ips
            .iter()
            .chain(&svc.external_ips)
            .copied()
            .chain(svc.load_balancer_ips.iter().map(|lb| lb.address))
            .collect();
        for port in &svc.ports {
            for &addr in &addresses {
                out.push((SocketAddr::new(addr, port.port.get()), port.protocol));
            }
            if let Some(node_port) = port.node_port {
                // Node ports of a family the service lacks are the extras' business.
                let families: Vec<Family> = svc.cluster_ips.iter().map(|&a| Family::of(a)).collect();
                let addresses = policy.nodes.iter().flat_map(|n| &n.addresses);
                for addr in addresses.filter(|&&a| families.contains(&Family::of(a))) {
                    out.push((SocketAddr::new(*addr, node_port.get()), port.protocol));
                }
            }
        }
        for &addr in &svc.cluster_ips {
            out.push((SocketAddr::new(addr, 9), Protocol::Tcp));
        }
    }
    for cidr in &policy.cluster.service_cidrs {
        let unallocated = match cidr {
            IpNet::V4(net) => IpAddr::from(net.broadcast().to_bits().wrapping_sub(1).to_be_bytes()),
            IpNet::V6(net) => IpAddr::from(net.broadcast().to_bits().wrapping_sub(1).to_be_bytes()),
        };
        out.push((SocketAddr::new(unallocated, 80), Protocol::Tcp));
    }
    for addr in policy.nodes.iter().flat_map(|n| &n.addresses) {
        out.push((SocketAddr::new(*addr, 30999), Protocol::Udp));
    }
    out
}

/// One packet to send, and through which node the router sends what it routes.
#[derive(Debug, Clone)]
struct Flow {
    source: Source,
    to: SocketAddr,
    protocol: Protocol,
    ingress: String,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = self.source.address(Family::of(self.to.ip()));
        write!(
            f,
            "{} ({from}) -> {}/{} [router via {}]",
            self.source.name,
            self.to,
            self.protocol.as_str(),
            self.ingress
        )
    }
}

/// What the kernel should do, according to the tracer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// An echo pod answers: one of these (endpoint, source seen) pairs; or, when some
    /// endpoints' replies cannot find their way back through the translating node,
    /// nothing does.
    Answer {
        pairs: Vec<(SocketAddr, IpAddr)>,
        or_silence: bool,
    },
    Silence,
    Refusal,
    /// Not svcnft's to decide (no route, a routing loop): anything but an answer.
    NoAnswer,
}

/// The compiled policy of every node, as the nodes hold it.
struct Compiled {
    nodes: BTreeMap<String, (NodePlan, Ruleset)>,
    /// What the router sends to the ingress node: service CIDRs, external and
    /// load-balancer IPs.
    routed: Vec<IpNet>,
}

impl Compiled {
    fn new(policy: &Policy, paths: &[PathBuf]) -> Self {
        let nodes = policy.nodes.iter().map(|n| (n.name.clone(), compile(paths, &n.name).unwrap())).collect();
        let mut routed = policy.cluster.service_cidrs.clone();
        for svc in &policy.services {
            let hosts = svc.external_ips.iter().copied().chain(svc.load_balancer_ips.iter().map(|lb| lb.address));
            routed.extend(hosts.map(IpNet::from));
        }
        Self { nodes, routed }
    }

    /// The node owning `addr`, if any.
    fn owner(&self, addr: IpAddr) -> Option<&str> {
        self.nodes.iter().find(|(_, (plan, _))| plan.node.all_addresses().any(|a| a == addr)).map(|(n, _)| n.as_str())
    }

    /// Where the router sends `addr`.
    fn router_hop<'a>(&'a self, addr: IpAddr, ingress: &'a str) -> Option<&'a str> {
        self.owner(addr).or_else(|| self.routed.iter().any(|net| net.contains(&addr)).then_some(ingress))
    }

    /// Follows the packet node by node: each node's rules as the tracer reads them,
    /// then the lab's routing to the next node while the rules let it pass. A client
    /// `returning_to` an endpoint is in that endpoint's session-affinity sets.
    fn predict(&self, flow: &Flow, returning_to: Option<SocketAddr>) -> Expected {
        let from = flow.source.address(Family::of(flow.to.ip()));
        let packet = Packet::new(from, flow.to, flow.protocol).unwrap();
        let mut node = match &flow.source.first_node {
            Some(node) => node.as_str(),
            None => match self.router_hop(flow.to.ip(), &flow.ingress) {
                Some(node) => node,
                None => return Expected::NoAnswer,
            },
        };
        let mut visited = vec![node];
        loop {
            let (plan, ruleset) = &self.nodes[node];
            let t = trace::trace(ruleset, &plan.node, &packet, &TraceOptions { returning_to });
            match t.verdict {
                TraceVerdict::Dnat => {
                    let (pairs, lost): (Vec<_>, Vec<_>) =
                        t.paths.iter().filter_map(|p| Some((p.endpoint?, p.source_seen?, p.masquerade))).partition(
                            |&(endpoint, seen, masqueraded)| {
                                masqueraded || self.replies_cross(node, endpoint.ip(), seen, &flow.source)
                            },
                        );
                    let pairs: Vec<_> = pairs.into_iter().map(|(endpoint, seen, _)| (endpoint, seen)).collect();
                    return if pairs.is_empty() {
                        Expected::Silence
                    } else {
                        Expected::Answer { pairs, or_silence: !lost.is_empty() }
                    };
                }
                TraceVerdict::Drop => return Expected::Silence,
                TraceVerdict::Reject => return Expected::Refusal,
                TraceVerdict::Pass => {}
            }
            // Passed: delivered here, or routed on (pods and nodes send all but their
            // own pod network to the router, which knows the nodes and the routed
            // service addresses).
            let next = match self.owner(flow.to.ip()) {
                Some(owner) if owner == node => return Expected::Refusal,
                Some(owner) => owner,
                None => match self.router_hop(flow.to.ip(), &flow.ingress) {
                    Some(next) => next,
                    None => return Expected::NoAnswer,
                },
            };
            if visited.contains(&next) {
                return Expected::NoAnswer;
            }
            visited.push(next);
            node = next;
        }
    }

    /// Whether the endpoint's reply to an unmasqueraded client goes back through the
    /// node that translated the request, which must undo the translation: it does when
    /// that node hosts the endpoint or the client (or is the client's own node).
    fn replies_cross(&self, node: &str, endpoint: IpAddr, seen: IpAddr, source: &Source) -> bool {
        let hosts = |addr: IpAddr| {
            let (plan, _) = &self.nodes[node];
            plan.node.pod_cidrs.iter().any(|c| c.contains(&addr))
        };
        hosts(endpoint) || hosts(seen) || source.first_node.as_deref() == Some(node)
    }
}

/// What the kernel did, in the tracer's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Observed {
    Answer(SocketAddr, IpAddr),
    Silence,
    Refusal,
    Other(String),
}

fn observe(lab: &Lab, flow: &Flow, wait: Duration) -> Observed {
    let target = Target { udp: flow.protocol == Protocol::Udp, addr: flow.to, path: "/".into() };
    match lab.probe_from(&flow.source.ns, &target, wait).unwrap() {
        Outcome::Answered(response) => {
            let endpoint = response.value("server_address").and_then(|a| a.parse().ok());
            let client = response.value("client_address").and_then(|a| a.parse().ok());
            match (endpoint, client) {
                (Some(endpoint), Some(client)) => Observed::Answer(endpoint, client),
                _ => Observed::Other(format!("not an echo: {}", response.body)),
            }
        }
        Outcome::TimedOut => Observed::Silence,
        Outcome::Refused => Observed::Refusal,
        Outcome::Failed(e) => Observed::Other(e),
    }
}

fn agrees(expected: &Expected, observed: &Observed) -> bool {
    match (expected, observed) {
        (Expected::Answer { pairs, .. }, Observed::Answer(endpoint, client)) => pairs.contains(&(*endpoint, *client)),
        (Expected::Answer { or_silence, .. }, Observed::Silence) => *or_silence,
        (Expected::Silence, Observed::Silence) | (Expected::Refusal, Observed::Refusal) => true,
        (Expected::NoAnswer, observed) => !matches!(observed, Observed::Answer(..)),
        _ => false,
    }
}

/// Sends the router's share of the service addresses through one node.
fn route_through(lab: &Lab, compiled: &Compiled, node: &str) {
    let node = lab.node(node).unwrap();
    for net in &compiled.routed {
        let hop = if net.addr().is_ipv4() { node.ipv4.to_string() } else { node.ipv6.to_string() };
        lab.exec_in(lab.router(), &["ip", "route", "replace", &net.to_string(), "via", &hop]).unwrap();
    }
}

#[test]
fn the_tracer_predicts_what_the_kernel_does() {
    let Some(lab) = start() else { return };
    // The load balancer rewrites its VIP routes only when node health changes; no node
    // serves a health check here, so once it has settled, the routes set below stay.
    let log = state_dir().join(lab.prefix()).join(format!("{}-load-balancer.log", lab.router()));
    let settled = || std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 2);
    lab.wait_until(Duration::from_secs(10), settled).unwrap();

    let seed = std::env::var("SVCNFT_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let mut rng = Rng(seed);
    let sources = sources(&lab);
    let node_names: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let disagreements = Mutex::new(Vec::new());
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    let returning = AtomicUsize::new(0);
    for name in POLICIES {
        let paths = policy(name);
        let files = svcnft_runtime::sources::read_policy(&paths).unwrap();
        let policy = svcnft_compiler::check(&files).unwrap().policy;
        let compiled = Compiled::new(&policy, &paths);
        lab.apply_policy_everywhere(&paths).unwrap();
        let destinations = destinations(&policy);
        let mut flows: Vec<(Flow, Expected)> = (0..FLOWS_PER_POLICY)
            .map(|_| {
                let &(to, protocol) = rng.pick(&destinations);
                let flow =
                    Flow { source: rng.pick(&sources).clone(), to, protocol, ingress: rng.pick(&node_names).clone() };
                let expected = compiled.predict(&flow, None);
                (flow, expected)
            })
            .collect();
        flows.sort_by(|a, b| a.0.ingress.cmp(&b.0.ingress));
        for ingress in &node_names {
            route_through(&lab, &compiled, ingress);
            let batch: Vec<&(Flow, Expected)> = flows.iter().filter(|(f, _)| &f.ingress == ingress).collect();
            let next = AtomicUsize::new(0);
            let check = |flow: &Flow, expected: &Expected, what: &str| {
                let mut observed = observe(&lab, flow, DROP_WAIT);
                if observed == Observed::Silence && !agrees(expected, &observed) {
                    observed = observe(&lab, flow, PATIENT_WAIT);
                }
                if !agrees(expected, &observed) {
                    let line = format!("{name}: {what}{flow}: traced {expected:?}, kernel {observed:?}");
                    disagreements.lock().unwrap().push(line);
                }
                observed
            };
            std::thread::scope(|scope| {
                for _ in 0..PARALLEL {
                    scope.spawn(|| {
                        while let Some((flow, expected)) = batch.get(next.fetch_add(1, Ordering::Relaxed)) {
                            // A client answered by one of several endpoints comes back:
                            // where session affinity holds, the tracer told of its
                            // return must name the endpoint the kernel picks again.
                            if let (Expected::Answer { pairs, .. }, Observed::Answer(endpoint, _)) =
                                (expected, check(flow, expected, ""))
                            {
                                if pairs.len() > 1 {
                                    check(flow, &compiled.predict(flow, Some(endpoint)), "returning ");
                                    returning.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
        }
        for (_, expected) in &flows {
            let kind = format!("{expected:?}");
            *tally.entry(kind.split([' ', '(']).next().unwrap().to_string()).or_default() += 1;
        }
        total += flows.len();
    }
    let returning = returning.into_inner();
    eprintln!("{total} flows (seed {seed:#x}): {tally:?}, and {returning} returning clients");
    let disagreements = disagreements.into_inner().unwrap();
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
}
