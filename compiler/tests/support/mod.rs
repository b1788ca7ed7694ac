//! Compact builders for policies and a table-driven flow checker, so that each
//! flow reads as one line: node, source, destination, protocol, expectation.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use svcnft_compiler::policy::*;
use svcnft_compiler::trace::{self, Packet, Trace, TraceOptions, TraceVerdict};

fn port(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("test ports are non-zero")
}

fn addr(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|_| panic!("bad address in test: {text}"))
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().unwrap_or_else(|_| panic!("bad prefix in test: {text}"))
}

/// A policy under construction.
pub struct P(pub Policy);

/// An empty policy with the given cluster CIDRs (none means no local-traffic detector).
pub fn policy(cluster_cidrs: &[&str], service_cidrs: &[&str]) -> P {
    P(Policy {
        cluster: Cluster {
            cluster_cidrs: cluster_cidrs.iter().map(|c| net(c)).collect(),
            service_cidrs: service_cidrs.iter().map(|c| net(c)).collect(),
            ..Cluster::default()
        },
        ..Policy::default()
    })
}

impl P {
    /// `addresses` then `local:`-prefixed local addresses; `pods` are pod CIDRs.
    pub fn node(mut self, name: &str, addresses: &[&str], pods: &[&str]) -> P {
        let (local, primary): (Vec<&str>, Vec<&str>) = addresses.iter().partition(|a| a.starts_with("local:"));
        self.0.nodes.push(Node {
            name: name.into(),
            addresses: primary.into_iter().map(addr).collect(),
            local_addresses: local.into_iter().map(|a| addr(&a["local:".len()..])).collect(),
            pod_cidrs: pods.iter().map(|p| net(p)).collect(),
            zone: None,
        });
        self
    }

    pub fn svc(mut self, service: S) -> P {
        self.0.services.push(std::sync::Arc::new(service.0));
        self
    }

    pub fn zone(mut self, node: &str, zone: &str) -> P {
        if let Some(n) = self.0.nodes.iter_mut().find(|n| n.name == node) {
            n.zone = Some(zone.into());
        }
        self
    }

    pub fn masquerade_all(mut self) -> P {
        self.0.cluster.masquerade_all = true;
        self
    }

    pub fn node_port_addresses(mut self, which: NodePortAddresses) -> P {
        self.0.cluster.node_port_addresses = which;
        self
    }
}

/// A service under construction.
pub struct S(pub Service);

/// A ClusterIP service `ns/name` with these cluster IPs and no ports yet.
pub fn svc(name: &str, cluster_ips: &[&str]) -> S {
    let (namespace, name) = name.split_once('/').expect("services are named NS/NAME");
    S(Service {
        name: ServiceName { namespace: namespace.into(), name: name.into() },
        kind: ServiceType::ClusterIp,
        cluster_ips: cluster_ips.iter().map(|a| addr(a)).collect(),
        ports: Vec::new(),
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        source_ranges: Vec::new(),
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: None,
        traffic_distribution: None,
        endpoints: Some(Endpoints::default()),
    })
}

impl S {
    pub fn node_port(mut self) -> S {
        self.0.kind = ServiceType::NodePort;
        self
    }

    pub fn load_balancer(mut self) -> S {
        self.0.kind = ServiceType::LoadBalancer;
        self
    }

    /// `port [NAME] PORT/PROTO [target T] [node-port N]`: `spec` is `80/tcp`.
    pub fn port(mut self, name: Option<&str>, spec: &str, target: Option<TargetPort>, node_port: Option<u16>) -> S {
        let (number, protocol) = spec.split_once('/').expect("ports are PORT/PROTO");
        self.0.ports.push(ServicePort {
            name: name.map(Into::into),
            port: port(number.parse().expect("numeric port")),
            protocol: trace::parse_protocol(protocol).expect("known protocol"),
            target,
            node_port: node_port.map(port),
        });
        self
    }

    /// The usual single port: `80/tcp target 8080 [node-port N]`.
    pub fn http(self, node_port: Option<u16>) -> S {
        self.port(None, "80/tcp", Some(TargetPort::Number(port(8080))), node_port)
    }

    pub fn external_ip(mut self, a: &str) -> S {
        self.0.external_ips.push(addr(a));
        self
    }

    pub fn lb_ip(mut self, a: &str, mode: LoadBalancerIpMode) -> S {
        self.0.load_balancer_ips.push(LoadBalancerIp { address: addr(a), mode });
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> S {
        self.0.source_ranges = ranges.iter().map(|r| net(r)).collect();
        self
    }

    pub fn etp_local(mut self, health_check_node_port: u16) -> S {
        self.0.external_traffic_policy = TrafficPolicy::Local;
        self.0.health_check_node_port = NonZeroU16::new(health_check_node_port);
        self
    }

    pub fn itp_local(mut self) -> S {
        self.0.internal_traffic_policy = TrafficPolicy::Local;
        self
    }

    pub fn distribution(mut self, distribution: TrafficDistribution) -> S {
        self.0.traffic_distribution = Some(distribution);
        self
    }

    pub fn affinity(mut self, seconds: u64) -> S {
        self.0.session_affinity = Some(Duration::from_secs(seconds));
        self
    }

    pub fn no_endpoints_block(mut self) -> S {
        self.0.endpoints = None;
        self
    }

    /// `port NAME PORT` in the endpoints block.
    pub fn endpoint_port(mut self, name: Option<&str>, number: u16) -> S {
        let block = self.0.endpoints.get_or_insert_with(Endpoints::default);
        block.ports.push(EndpointPort { name: name.map(Into::into), port: port(number) });
        self
    }

    /// A ready endpoint on `node` (`""` for none).
    pub fn ep(self, address: &str, node: &str) -> S {
        self.ep_in(address, node, Conditions::READY)
    }

    pub fn ep_terminating(self, address: &str, node: &str) -> S {
        self.ep_in(address, node, Conditions { ready: false, serving: true, terminating: true })
    }

    pub fn ep_not_serving(self, address: &str, node: &str) -> S {
        self.ep_in(address, node, Conditions { ready: false, serving: false, terminating: true })
    }

    pub fn ep_not_ready(self, address: &str, node: &str) -> S {
        self.ep_in(address, node, Conditions { ready: false, serving: false, terminating: false })
    }

    fn ep_in(mut self, address: &str, node: &str, conditions: Conditions) -> S {
        let block = self.0.endpoints.get_or_insert_with(Endpoints::default);
        block.endpoints.push(Endpoint {
            address: addr(address),
            node: (!node.is_empty()).then(|| node.into()),
            zone: None,
            conditions,
            hint_zones: Vec::new(),
            hint_nodes: Vec::new(),
        });
        self
    }
}

pub fn named(name: &str) -> Option<TargetPort> {
    Some(TargetPort::Name(name.into()))
}

pub fn number(n: u16) -> Option<TargetPort> {
    Some(TargetPort::Number(port(n)))
}

/// One flow: `(node, from, to, protocol, expectation)`.
///
/// The expectation is `pass`, `drop`, `reject`, or
/// `dnat EP,EP… [masq] seen ADDR` where `seen` is what every endpoint sees, or
/// `seen EP=ADDR EP=ADDR…` per endpoint.
pub type Flow<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

/// Traces one packet through the ruleset compiled for `node`.
pub fn run(policy: &Policy, node: &str, from: &str, to: &str, proto: &str, options: &TraceOptions) -> Trace {
    let (_, ruleset) = svcnft_compiler::compile(policy, node).expect("the node is declared");
    for table in &ruleset.tables {
        let sets: BTreeSet<&str> = table.sets.iter().map(|s| s.name.as_str()).collect();
        let chains: BTreeSet<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(sets.len(), table.sets.len(), "a set is declared twice in {node}'s ruleset");
        assert_eq!(chains.len(), table.chains.len(), "a chain is declared twice in {node}'s ruleset");
    }
    let node = policy.node(node).expect("the node is declared");
    let to = trace::parse_destination(to).expect("a valid destination");
    let protocol = trace::parse_protocol(proto).expect("a valid protocol");
    let packet = Packet::new(addr(from), to, protocol).expect("one family");
    trace::trace(&ruleset, node, &packet, options)
}

/// Checks every flow and reports all mismatches at once.
pub fn check(policy: &P, flows: &[Flow]) {
    check_with(policy, &TraceOptions::default(), flows);
}

pub fn check_with(policy: &P, options: &TraceOptions, flows: &[Flow]) {
    let failures: Vec<String> = flows
        .iter()
        .filter_map(|&(node, from, to, proto, expect)| {
            let trace = run(&policy.0, node, from, to, proto, options);
            mismatch(&trace, expect)
                .map(|why| format!("{node}: {from} -> {to}/{proto}: expected `{expect}`: {why}\n{trace}"))
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} flows failed:\n\n{}", failures.len(), flows.len(), failures.join("\n\n"));
}

fn mismatch(trace: &Trace, expect: &str) -> Option<String> {
    let mut words = expect.split_whitespace();
    let verdict = match words.next() {
        Some("dnat") => TraceVerdict::Dnat,
        Some("pass") => TraceVerdict::Pass,
        Some("drop") => TraceVerdict::Drop,
        Some("reject") => TraceVerdict::Reject,
        other => panic!("bad expectation verb {other:?}"),
    };
    if trace.verdict != verdict {
        return Some(format!("verdict {:?}", trace.verdict));
    }
    if verdict != TraceVerdict::Dnat {
        let clean = trace.endpoints.is_empty() && trace.source_seen.is_none();
        return (!clean).then(|| "endpoints or source_seen set without dnat".to_string());
    }
    if trace.paths.iter().any(|p| p.verdict != TraceVerdict::Dnat) {
        return Some("some paths do not dnat".into());
    }
    let endpoints: Vec<SocketAddr> = words
        .next()
        .expect("dnat needs endpoints")
        .split(',')
        .map(|e| trace::parse_destination(e).expect("valid endpoint"))
        .collect();
    let mut sorted = endpoints.clone();
    sorted.sort();
    if trace.endpoints != sorted {
        return Some(format!("endpoints {:?}", trace.endpoints));
    }
    let rest: Vec<&str> = words.collect();
    let masquerade = rest.first() == Some(&"masq");
    if trace.masquerade != masquerade {
        return Some(format!("masquerade {}", trace.masquerade));
    }
    let seen = &rest[usize::from(masquerade)..];
    assert_eq!(seen.first(), Some(&"seen"), "dnat expectations say what the endpoint sees");
    for path in &trace.paths {
        let endpoint = path.endpoint.expect("dnat paths have an endpoint");
        let expected = seen[1..]
            .iter()
            .find_map(|s| match s.split_once('=') {
                Some((e, a)) => (trace::parse_destination(e).ok() == Some(endpoint)).then_some(a),
                None => Some(s),
            })
            .unwrap_or_else(|| panic!("no `seen` for {endpoint}"));
        if path.source_seen != Some(addr(expected)) {
            return Some(format!("{endpoint} sees {:?}", path.source_seen));
        }
        if path.masquerade != masquerade && !seen[1..].iter().any(|s| s.contains('=')) {
            return Some(format!("path to {endpoint}: masquerade {}", path.masquerade));
        }
    }
    None
}
