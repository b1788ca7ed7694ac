//! Synthetic clusters in the policy language, for benchmarks and scale tests: the
//! same generator feeds the compile bench, the kernel load comparison and the
//! runtime benches, so their numbers describe one cluster.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// The size of a generated cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub nodes: usize,
    /// Every this many services has session affinity (0: none).
    pub affinity_every: usize,
}

impl Shape {
    /// The reference scale of the design: 10k services × 10 endpoints over 50 nodes.
    pub const LARGE: Shape = Shape { services: 10_000, endpoints_per_service: 10, nodes: 50, affinity_every: 7 };
}

const NODE_PORT_FIRST: usize = 30000;
const NODE_PORT_COUNT: usize = 2768;

/// Policy text for a cluster of `shape`: every fifth service a NodePort (while
/// node ports last), every `affinity_every`-th (by default seventh) with session affinity, endpoints spread
/// round-robin over the nodes. `revision` readdresses the first endpoint of
/// service 1 (a ClusterIP service, without session affinity unless every
/// service has it), so that two revisions differ by exactly one endpoint.
pub fn policy_text(shape: Shape, revision: u32) -> String {
    assert!(shape.nodes >= 1 && shape.nodes <= 100, "pod CIDRs are carved from 10.128.0.0/9");
    let mut out = String::with_capacity(shape.services * (200 + 40 * shape.endpoints_per_service));
    out.push_str("cluster {\n    cluster-cidr 10.128.0.0/9\n    service-cidr 10.96.0.0/12\n}\n\n");
    for n in 0..shape.nodes {
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 240, 0, 10)) + n as u32);
        writeln!(out, "node node-{n} {{ address {address}; pod-cidr 10.{}.0.0/16 }}", 128 + n).unwrap();
    }
    for s in 0..shape.services {
        let cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + s as u32);
        let node_port = (s % 5 == 0 && s / 5 < NODE_PORT_COUNT).then(|| NODE_PORT_FIRST + s / 5);
        writeln!(out, "\nservice default/svc-{s} {{").unwrap();
        if node_port.is_some() {
            out.push_str("    type node-port\n");
        }
        writeln!(out, "    cluster-ip {cluster_ip}").unwrap();
        match node_port {
            Some(np) => writeln!(out, "    port 80/tcp target 8080 node-port {np}").unwrap(),
            None => out.push_str("    port 80/tcp target 8080\n"),
        }
        if shape.affinity_every > 0 && s % shape.affinity_every == 0 {
            out.push_str("    session-affinity client-ip\n");
        }
        writeln!(out, "}}\nendpoints default/svc-{s} {{").unwrap();
        for e in 0..shape.endpoints_per_service {
            let i = s * shape.endpoints_per_service + e;
            let node = i % shape.nodes;
            let k = i / shape.nodes;
            let (third, fourth) = if s == 1 && e == 0 && revision > 0 {
                (255, revision as usize % 250 + 2)
            } else {
                (k / 250, k % 250 + 2)
            };
            writeln!(out, "    endpoint 10.{}.{third}.{fourth} node node-{node}", 128 + node).unwrap();
        }
        out.push_str("}\n");
    }
    out
}
