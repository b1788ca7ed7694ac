//! Flows through compiled rulesets, each expectation taken from Service semantics
//! (kube-proxy's nftables mode), not from the rules: a disagreement is a bug in
//! planning or lowering.

mod support;

use std::net::IpAddr;

use support::*;
use svcnft_compiler::policy::LoadBalancerIpMode::{Proxy, Vip};
use svcnft_compiler::policy::NodePortAddresses;
use svcnft_compiler::policy::TrafficDistribution::{PreferSameNode, PreferSameZone};
use svcnft_compiler::trace::{self, Packet, TraceError, TraceOptions};

const OUTSIDE: &str = "203.0.113.7";

/// Three nodes; node-1 also owns 192.168.1.3.
fn nodes(p: P) -> P {
    p.node("node-1", &["10.240.0.3", "local:192.168.1.3"], &["10.244.1.0/24"])
        .node("node-2", &["10.240.0.4"], &["10.244.2.0/24"])
        .node("node-3", &["10.240.0.5"], &["10.244.3.0/24"])
}

fn cluster() -> P {
    nodes(policy(&["10.244.0.0/16"], &["10.96.0.0/16"]))
}

fn clusterip_services(p: P) -> P {
    p.svc(svc("default/web", &["10.96.0.10"]).http(None).ep("10.244.1.5", "node-1").ep("10.244.2.5", "node-2"))
        .svc(svc("default/empty", &["10.96.0.11"]).http(None))
}

#[test]
fn cluster_ip() {
    let both = "10.244.1.5:8080,10.244.2.5:8080";
    let masq_n1 = format!("dnat {both} masq seen 10.244.1.5:8080=10.244.1.1 10.244.2.5:8080=10.240.0.3");
    let masq_n3 = format!("dnat {both} masq seen 10.240.0.5");
    let p = clusterip_services(cluster());
    check(
        &p,
        &[
            ("node-1", "10.244.1.9", "10.96.0.10:80", "tcp", &format!("dnat {both} seen 10.244.1.9")),
            ("node-1", "10.244.3.9", "10.96.0.10:80", "tcp", &format!("dnat {both} seen 10.244.3.9")),
            ("node-2", "10.244.2.9", "10.96.0.10:80", "tcp", &format!("dnat {both} seen 10.244.2.9")),
            ("node-3", "10.244.3.9", "10.96.0.10:80", "tcp", &format!("dnat {both} seen 10.244.3.9")),
            // From the node itself: outside the cluster CIDR, so masqueraded.
            ("node-1", "10.240.0.3", "10.96.0.10:80", "tcp", &masq_n1),
            ("node-1", "192.168.1.3", "10.96.0.10:80", "tcp", &masq_n1),
            ("node-3", "10.240.0.5", "10.96.0.10:80", "tcp", &masq_n3),
            // From outside the cluster CIDR.
            ("node-1", OUTSIDE, "10.96.0.10:80", "tcp", &masq_n1),
            ("node-3", OUTSIDE, "10.96.0.10:80", "tcp", &masq_n3),
            (
                "node-2",
                "10.240.0.3",
                "10.96.0.10:80",
                "tcp",
                &format!("dnat {both} masq seen 10.244.1.5:8080=10.240.0.4 10.244.2.5:8080=10.244.2.1"),
            ),
            // Hairpin: a pod reaching itself is always masqueraded, from the gateway.
            (
                "node-1",
                "10.244.1.5",
                "10.96.0.10:80",
                "tcp",
                &format!("dnat {both} masq seen 10.244.1.5:8080=10.244.1.1 10.244.2.5:8080=10.244.1.5"),
            ),
            (
                "node-2",
                "10.244.2.5",
                "10.96.0.10:80",
                "tcp",
                &format!("dnat {both} masq seen 10.244.1.5:8080=10.244.2.5 10.244.2.5:8080=10.244.2.1"),
            ),
            // Unknown port, protocol, unallocated address, no endpoints.
            ("node-1", "10.244.1.9", "10.96.0.10:81", "tcp", "reject"),
            ("node-1", "10.240.0.3", "10.96.0.10:81", "tcp", "reject"),
            ("node-1", OUTSIDE, "10.96.0.10:81", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.10:80", "udp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.10:80", "sctp", "reject"),
            ("node-1", "10.244.1.9", "10.96.5.5:80", "tcp", "drop"),
            ("node-1", "10.240.0.3", "10.96.5.5:80", "tcp", "drop"),
            ("node-1", OUTSIDE, "10.96.5.5:80", "tcp", "drop"),
            ("node-2", "10.244.2.9", "10.96.255.255:443", "udp", "drop"),
            ("node-1", "10.244.1.9", "10.96.0.11:80", "tcp", "reject"),
            ("node-1", "10.240.0.3", "10.96.0.11:80", "tcp", "reject"),
            ("node-1", OUTSIDE, "10.96.0.11:80", "tcp", "reject"),
            ("node-3", "10.244.3.9", "10.96.0.11:80", "tcp", "reject"),
            // Not svcnft's business.
            ("node-1", "10.244.1.9", "8.8.8.8:80", "tcp", "pass"),
            ("node-1", "10.240.0.3", "8.8.8.8:53", "udp", "pass"),
            ("node-1", OUTSIDE, "10.244.1.5:8080", "tcp", "pass"),
            ("node-1", OUTSIDE, "10.240.0.3:22", "tcp", "pass"),
            ("node-1", "10.244.1.9", "10.97.0.10:80", "tcp", "pass"),
        ],
    );
}

#[test]
fn masquerade_all() {
    let p = clusterip_services(cluster().masquerade_all());
    let both = "10.244.1.5:8080,10.244.2.5:8080";
    let seen_n1 = "seen 10.244.1.5:8080=10.244.1.1 10.244.2.5:8080=10.240.0.3";
    check(
        &p,
        &[
            ("node-1", "10.244.1.9", "10.96.0.10:80", "tcp", &format!("dnat {both} masq {seen_n1}")),
            ("node-1", "10.244.3.9", "10.96.0.10:80", "tcp", &format!("dnat {both} masq {seen_n1}")),
            ("node-1", "10.240.0.3", "10.96.0.10:80", "tcp", &format!("dnat {both} masq {seen_n1}")),
            ("node-1", OUTSIDE, "10.96.0.10:80", "tcp", &format!("dnat {both} masq {seen_n1}")),
            ("node-3", "10.244.3.9", "10.96.0.10:80", "tcp", &format!("dnat {both} masq seen 10.240.0.5")),
            ("node-1", "10.244.1.9", "10.96.0.11:80", "tcp", "reject"),
        ],
    );
}

#[test]
fn no_cluster_cidr() {
    let p = nodes(policy(&[], &["10.96.0.0/16"]))
        .svc(svc("default/web", &["10.96.0.10"]).http(None).ep("10.244.1.5", "node-1").ep("10.244.2.5", "node-2"))
        .svc(
            svc("default/np-local", &["10.96.0.13"])
                .node_port()
                .http(Some(30081))
                .etp_local(0)
                .ep("10.244.1.7", "node-1")
                .ep("10.244.2.7", "node-2"),
        );
    let both = "10.244.1.5:8080,10.244.2.5:8080";
    check(
        &p,
        &[
            // No detector: nothing is masqueraded for coming from outside.
            ("node-1", OUTSIDE, "10.96.0.10:80", "tcp", &format!("dnat {both} seen {OUTSIDE}")),
            ("node-1", "10.244.1.9", "10.96.0.10:80", "tcp", &format!("dnat {both} seen 10.244.1.9")),
            ("node-1", "10.240.0.3", "10.96.0.10:80", "tcp", &format!("dnat {both} seen 10.240.0.3")),
            // Hairpin does not depend on the detector.
            (
                "node-1",
                "10.244.1.5",
                "10.96.0.10:80",
                "tcp",
                &format!("dnat {both} masq seen 10.244.1.5:8080=10.244.1.1 10.244.2.5:8080=10.244.1.5"),
            ),
            // eTP local without a detector: pods get no short-circuit, the node does.
            ("node-3", "10.244.3.9", "10.240.0.5:30081", "tcp", "drop"),
            ("node-3", OUTSIDE, "10.240.0.5:30081", "tcp", "drop"),
            (
                "node-3",
                "10.240.0.5",
                "10.240.0.5:30081",
                "tcp",
                "dnat 10.244.1.7:8080,10.244.2.7:8080 masq seen 10.240.0.5",
            ),
            ("node-1", "10.244.1.9", "10.240.0.3:30081", "tcp", "dnat 10.244.1.7:8080 seen 10.244.1.9"),
            ("node-1", OUTSIDE, "10.240.0.3:30081", "tcp", &format!("dnat 10.244.1.7:8080 seen {OUTSIDE}")),
        ],
    );
}

fn node_port_services(p: P) -> P {
    p.svc(
        svc("default/nport", &["10.96.0.12"])
            .node_port()
            .http(Some(30080))
            .ep("10.244.2.6", "node-2")
            .ep("10.244.3.6", "node-3"),
    )
    .svc(
        svc("default/np-local", &["10.96.0.13"])
            .node_port()
            .http(Some(30081))
            .etp_local(0)
            .ep("10.244.1.7", "node-1")
            .ep("10.244.2.7", "node-2"),
    )
    .svc(svc("default/np-empty", &["10.96.0.14"]).node_port().http(Some(30082)))
}

#[test]
fn node_port_cluster_policy() {
    let p = node_port_services(cluster());
    let both = "10.244.2.6:8080,10.244.3.6:8080";
    check(
        &p,
        &[
            ("node-1", OUTSIDE, "10.240.0.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            (
                "node-2",
                OUTSIDE,
                "10.240.0.4:30080",
                "tcp",
                &format!("dnat {both} masq seen 10.244.2.6:8080=10.244.2.1 10.244.3.6:8080=10.240.0.4"),
            ),
            (
                "node-3",
                OUTSIDE,
                "10.240.0.5:30080",
                "tcp",
                &format!("dnat {both} masq seen 10.244.2.6:8080=10.240.0.5 10.244.3.6:8080=10.244.3.1"),
            ),
            // Always masqueraded, even from pods and other nodes.
            ("node-1", "10.244.1.9", "10.240.0.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", "10.240.0.4", "10.240.0.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", "10.240.0.3", "10.240.0.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            // Only the primary address accepts node ports by default; not loopback.
            ("node-1", OUTSIDE, "192.168.1.3:30080", "tcp", "pass"),
            ("node-1", "10.240.0.3", "127.0.0.1:30080", "tcp", "pass"),
            ("node-1", "127.0.0.1", "127.0.0.1:30080", "tcp", "pass"),
            ("node-1", OUTSIDE, "10.240.0.4:30080", "tcp", "pass"),
            // Other ports and protocols.
            ("node-1", OUTSIDE, "10.240.0.3:30083", "tcp", "pass"),
            ("node-1", OUTSIDE, "10.240.0.3:30080", "udp", "pass"),
            ("node-1", OUTSIDE, "10.240.0.3:80", "tcp", "pass"),
            // The cluster IP behaves as any ClusterIP.
            ("node-1", "10.244.1.9", "10.96.0.12:80", "tcp", &format!("dnat {both} seen 10.244.1.9")),
            ("node-1", OUTSIDE, "10.96.0.12:80", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            // No endpoints at all: rejected wherever it is reached.
            ("node-1", OUTSIDE, "10.240.0.3:30082", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.240.0.3:30082", "tcp", "reject"),
            ("node-1", "10.240.0.3", "10.240.0.3:30082", "tcp", "reject"),
            ("node-2", OUTSIDE, "10.240.0.4:30082", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.14:80", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.14:30082", "tcp", "reject"),
        ],
    );
}

#[test]
fn node_port_local_policy() {
    let p = node_port_services(cluster())
        .svc(svc("default/local-empty", &["10.96.0.15"]).node_port().http(Some(30084)).etp_local(0))
        .svc(
            svc("default/local-unready", &["10.96.0.16"])
                .node_port()
                .http(Some(30085))
                .etp_local(0)
                .ep_not_ready("10.244.1.16", "node-1")
                .ep("10.244.2.16", "node-2"),
        );
    let all = "10.244.1.7:8080,10.244.2.7:8080";
    check(
        &p,
        &[
            // An endpoint reaching itself through the short-circuit is a hairpin.
            (
                "node-1",
                "10.244.1.7",
                "10.240.0.3:30081",
                "tcp",
                &format!("dnat {all} masq seen 10.244.1.7:8080=10.244.1.1 10.244.2.7:8080=10.244.1.7"),
            ),
            // No endpoint anywhere: rejected, not dropped.
            ("node-1", OUTSIDE, "10.240.0.3:30084", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.240.0.3:30084", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.15:80", "tcp", "reject"),
            // A not-ready local endpoint does not count as local.
            ("node-1", OUTSIDE, "10.240.0.3:30085", "tcp", "drop"),
            ("node-2", OUTSIDE, "10.240.0.4:30085", "tcp", &format!("dnat 10.244.2.16:8080 seen {OUTSIDE}")),
            ("node-1", "10.244.1.9", "10.240.0.3:30085", "tcp", "dnat 10.244.2.16:8080 seen 10.244.1.9"),
            // External clients reach local endpoints only and keep their address.
            ("node-1", OUTSIDE, "10.240.0.3:30081", "tcp", &format!("dnat 10.244.1.7:8080 seen {OUTSIDE}")),
            ("node-2", OUTSIDE, "10.240.0.4:30081", "tcp", &format!("dnat 10.244.2.7:8080 seen {OUTSIDE}")),
            ("node-1", "10.240.0.4", "10.240.0.3:30081", "tcp", "dnat 10.244.1.7:8080 seen 10.240.0.4"),
            // No local endpoint: dropped.
            ("node-3", OUTSIDE, "10.240.0.5:30081", "tcp", "drop"),
            ("node-3", "10.240.0.3", "10.240.0.5:30081", "tcp", "drop"),
            // Pods short-circuit to every endpoint, unmasqueraded.
            ("node-3", "10.244.3.9", "10.240.0.5:30081", "tcp", &format!("dnat {all} seen 10.244.3.9")),
            ("node-1", "10.244.1.9", "10.240.0.3:30081", "tcp", &format!("dnat {all} seen 10.244.1.9")),
            ("node-1", "10.244.2.9", "10.240.0.3:30081", "tcp", &format!("dnat {all} seen 10.244.2.9")),
            // The node itself short-circuits too, masqueraded.
            ("node-3", "10.240.0.5", "10.240.0.5:30081", "tcp", &format!("dnat {all} masq seen 10.240.0.5")),
            (
                "node-1",
                "10.240.0.3",
                "10.240.0.3:30081",
                "tcp",
                &format!("dnat {all} masq seen 10.244.1.7:8080=10.244.1.1 10.244.2.7:8080=10.240.0.3"),
            ),
            // Its cluster IP follows the internal policy (cluster).
            ("node-3", "10.244.3.9", "10.96.0.13:80", "tcp", &format!("dnat {all} seen 10.244.3.9")),
            ("node-3", OUTSIDE, "10.96.0.13:80", "tcp", &format!("dnat {all} masq seen 10.240.0.5")),
            ("node-3", "10.240.0.5", "10.96.0.13:80", "tcp", &format!("dnat {all} masq seen 10.240.0.5")),
        ],
    );
}

#[test]
fn node_port_addresses() {
    let cidrs = NodePortAddresses::Cidrs(vec!["192.168.1.0/24".parse().expect("a prefix")]);
    let by_cidr = node_port_services(cluster().node_port_addresses(cidrs));
    let both = "10.244.2.6:8080,10.244.3.6:8080";
    check(
        &by_cidr,
        &[
            ("node-1", OUTSIDE, "192.168.1.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "10.240.0.3:30080", "tcp", "pass"),
            ("node-1", OUTSIDE, "192.168.1.3:30082", "tcp", "reject"),
            ("node-1", OUTSIDE, "10.240.0.3:30082", "tcp", "pass"),
            // node-2 has no address in the list: no node ports at all.
            ("node-2", OUTSIDE, "10.240.0.4:30080", "tcp", "pass"),
            ("node-2", OUTSIDE, "10.240.0.4:30082", "tcp", "pass"),
            ("node-1", OUTSIDE, "192.168.1.3:30081", "tcp", &format!("dnat 10.244.1.7:8080 seen {OUTSIDE}")),
        ],
    );
    let all = node_port_services(cluster().node_port_addresses(NodePortAddresses::All));
    check(
        &all,
        &[
            ("node-1", OUTSIDE, "192.168.1.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "10.240.0.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", "10.240.0.3", "192.168.1.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", "10.240.0.3", "127.0.0.1:30080", "tcp", "pass"),
            // The pod network's gateway is the node's own address too.
            ("node-1", OUTSIDE, "10.244.1.1:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "192.168.1.3:30082", "tcp", "reject"),
            ("node-1", OUTSIDE, "10.240.0.4:30080", "tcp", "pass"),
            (
                "node-2",
                OUTSIDE,
                "10.240.0.4:30080",
                "tcp",
                &format!("dnat {both} masq seen 10.244.2.6:8080=10.244.2.1 10.244.3.6:8080=10.240.0.4"),
            ),
        ],
    );
    let primary = node_port_services(cluster().node_port_addresses(NodePortAddresses::Primary));
    check(
        &primary,
        &[
            ("node-1", OUTSIDE, "10.240.0.3:30080", "tcp", &format!("dnat {both} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "192.168.1.3:30080", "tcp", "pass"),
        ],
    );
}

fn load_balancers(p: P) -> P {
    p.svc(
        svc("default/lb", &["10.96.0.20"])
            .load_balancer()
            .http(Some(30090))
            .lb_ip("198.51.100.10", Vip)
            .lb_ip("198.51.100.11", Proxy)
            .external_ip("192.0.2.10")
            .ep("10.244.2.8", "node-2"),
    )
    .svc(
        svc("default/lb-local", &["10.96.0.21"])
            .load_balancer()
            .http(Some(30091))
            .lb_ip("198.51.100.20", Vip)
            .external_ip("192.0.2.20")
            .etp_local(32000)
            .ep("10.244.1.8", "node-1")
            .ep("10.244.2.9", "node-2"),
    )
    .svc(
        svc("default/fw", &["10.96.0.30"])
            .load_balancer()
            .http(Some(30100))
            .lb_ip("198.51.100.30", Vip)
            .source_ranges(&["203.0.113.0/24"])
            .ep("10.244.3.10", "node-3"),
    )
    .svc(
        svc("default/fw-node", &["10.96.0.31"])
            .load_balancer()
            .http(Some(30101))
            .lb_ip("198.51.100.31", Vip)
            .source_ranges(&["10.240.0.0/24"])
            .ep("10.244.3.11", "node-3"),
    )
    .svc(svc("default/ext", &["10.96.0.32"]).http(None).external_ip("192.0.2.30").ep("10.244.1.12", "node-1"))
    .svc(svc("default/ext-empty", &["10.96.0.33"]).http(None).external_ip("192.0.2.31"))
}

#[test]
fn load_balancer_and_external_ips() {
    let p = load_balancers(cluster());
    let lb = "10.244.2.8:8080";
    check(
        &p,
        &[
            ("node-1", OUTSIDE, "198.51.100.10:80", "tcp", &format!("dnat {lb} masq seen 10.240.0.3")),
            ("node-2", OUTSIDE, "198.51.100.10:80", "tcp", &format!("dnat {lb} masq seen 10.244.2.1")),
            ("node-3", OUTSIDE, "198.51.100.10:80", "tcp", &format!("dnat {lb} masq seen 10.240.0.5")),
            ("node-1", "10.244.1.9", "198.51.100.10:80", "tcp", &format!("dnat {lb} masq seen 10.240.0.3")),
            ("node-1", "10.240.0.3", "198.51.100.10:80", "tcp", &format!("dnat {lb} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "192.0.2.10:80", "tcp", &format!("dnat {lb} masq seen 10.240.0.3")),
            ("node-1", "10.244.1.9", "192.0.2.10:80", "tcp", &format!("dnat {lb} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "10.240.0.3:30090", "tcp", &format!("dnat {lb} masq seen 10.240.0.3")),
            ("node-1", "10.244.1.9", "10.96.0.20:80", "tcp", &format!("dnat {lb} seen 10.244.1.9")),
            // A proxy-mode load-balancer IP is not programmed.
            ("node-1", OUTSIDE, "198.51.100.11:80", "tcp", "pass"),
            ("node-1", "10.244.1.9", "198.51.100.11:80", "tcp", "pass"),
            ("node-1", "10.240.0.3", "198.51.100.11:80", "tcp", "pass"),
            // Other ports of these addresses are not ours.
            ("node-1", OUTSIDE, "198.51.100.10:81", "tcp", "pass"),
            ("node-1", OUTSIDE, "198.51.100.10:80", "udp", "pass"),
            ("node-1", OUTSIDE, "192.0.2.10:443", "tcp", "pass"),
            // External IPs of a ClusterIP service: external traffic, masqueraded.
            ("node-2", OUTSIDE, "192.0.2.30:80", "tcp", "dnat 10.244.1.12:8080 masq seen 10.240.0.4"),
            ("node-1", OUTSIDE, "192.0.2.30:80", "tcp", "dnat 10.244.1.12:8080 masq seen 10.244.1.1"),
            ("node-2", "10.244.2.9", "192.0.2.30:80", "tcp", "dnat 10.244.1.12:8080 masq seen 10.240.0.4"),
            ("node-2", OUTSIDE, "192.0.2.31:80", "tcp", "reject"),
            ("node-2", "10.244.2.9", "192.0.2.31:80", "tcp", "reject"),
            ("node-2", "10.244.2.9", "10.96.0.33:80", "tcp", "reject"),
        ],
    );
}

#[test]
fn load_balancer_local_policy() {
    let p = load_balancers(cluster());
    let all = "10.244.1.8:8080,10.244.2.9:8080";
    check(
        &p,
        &[
            ("node-1", OUTSIDE, "198.51.100.20:80", "tcp", &format!("dnat 10.244.1.8:8080 seen {OUTSIDE}")),
            ("node-2", OUTSIDE, "198.51.100.20:80", "tcp", &format!("dnat 10.244.2.9:8080 seen {OUTSIDE}")),
            ("node-2", OUTSIDE, "192.0.2.20:80", "tcp", &format!("dnat 10.244.2.9:8080 seen {OUTSIDE}")),
            ("node-1", OUTSIDE, "10.240.0.3:30091", "tcp", &format!("dnat 10.244.1.8:8080 seen {OUTSIDE}")),
            ("node-3", OUTSIDE, "198.51.100.20:80", "tcp", "drop"),
            ("node-3", OUTSIDE, "192.0.2.20:80", "tcp", "drop"),
            ("node-3", OUTSIDE, "10.240.0.5:30091", "tcp", "drop"),
            ("node-3", "10.244.3.9", "198.51.100.20:80", "tcp", &format!("dnat {all} seen 10.244.3.9")),
            ("node-3", "10.244.3.9", "192.0.2.20:80", "tcp", &format!("dnat {all} seen 10.244.3.9")),
            ("node-3", "10.240.0.5", "198.51.100.20:80", "tcp", &format!("dnat {all} masq seen 10.240.0.5")),
            ("node-3", "10.240.0.5", "10.240.0.5:30091", "tcp", &format!("dnat {all} masq seen 10.240.0.5")),
            ("node-1", "10.244.1.9", "198.51.100.20:80", "tcp", &format!("dnat {all} seen 10.244.1.9")),
            ("node-3", "10.244.3.9", "10.96.0.21:80", "tcp", &format!("dnat {all} seen 10.244.3.9")),
        ],
    );
}

#[test]
fn an_address_that_is_a_cluster_ip_and_another_services_external_ip() {
    // 10.96.0.10 is web's cluster IP and local's external IP: traffic to web's
    // port is cluster-IP traffic (masqueraded from outside the cluster CIDR),
    // traffic to local's port external traffic that keeps the client's address.
    let p = cluster().svc(svc("default/web", &["10.96.0.10"]).http(None).ep("10.244.1.5", "node-1")).svc(
        svc("default/local", &["10.96.0.20"])
            .port(None, "8443/tcp", number(8443), None)
            .external_ip("10.96.0.10")
            .etp_local(0)
            .ep("10.244.1.6", "node-1"),
    );
    check(
        &p,
        &[
            ("node-1", OUTSIDE, "10.96.0.10:8443", "tcp", &format!("dnat 10.244.1.6:8443 seen {OUTSIDE}")),
            ("node-1", OUTSIDE, "10.96.0.10:80", "tcp", "dnat 10.244.1.5:8080 masq seen 10.244.1.1"),
            ("node-1", "10.244.2.9", "10.96.0.10:80", "tcp", "dnat 10.244.1.5:8080 seen 10.244.2.9"),
            ("node-2", OUTSIDE, "10.96.0.10:8443", "tcp", "drop"),
            ("node-1", OUTSIDE, "10.96.0.10:81", "tcp", "reject"),
        ],
    );
}

#[test]
fn source_ranges() {
    let p = load_balancers(cluster());
    let ep = "10.244.3.10:8080";
    let ep_node = "10.244.3.11:8080";
    check(
        &p,
        &[
            ("node-1", OUTSIDE, "198.51.100.30:80", "tcp", &format!("dnat {ep} masq seen 10.240.0.3")),
            ("node-1", "203.0.113.200", "198.51.100.30:80", "tcp", &format!("dnat {ep} masq seen 10.240.0.3")),
            ("node-3", OUTSIDE, "198.51.100.30:80", "tcp", &format!("dnat {ep} masq seen 10.244.3.1")),
            ("node-1", "198.18.0.1", "198.51.100.30:80", "tcp", "drop"),
            ("node-3", "198.18.0.1", "198.51.100.30:80", "tcp", "drop"),
            ("node-1", "10.244.1.9", "198.51.100.30:80", "tcp", "drop"),
            ("node-1", "10.240.0.3", "198.51.100.30:80", "tcp", "drop"),
            // Node ports and the cluster IP are not filtered.
            ("node-1", "198.18.0.1", "10.240.0.3:30100", "tcp", &format!("dnat {ep} masq seen 10.240.0.3")),
            ("node-1", "198.18.0.1", "10.96.0.30:80", "tcp", &format!("dnat {ep} masq seen 10.240.0.3")),
            ("node-1", "10.244.1.9", "10.96.0.30:80", "tcp", &format!("dnat {ep} seen 10.244.1.9")),
            // A range holding a node address: the node and the VIP itself may use it.
            ("node-1", "10.240.0.3", "198.51.100.31:80", "tcp", &format!("dnat {ep_node} masq seen 10.240.0.3")),
            ("node-1", "10.240.0.99", "198.51.100.31:80", "tcp", &format!("dnat {ep_node} masq seen 10.240.0.3")),
            ("node-1", "198.51.100.31", "198.51.100.31:80", "tcp", &format!("dnat {ep_node} masq seen 10.240.0.3")),
            ("node-1", OUTSIDE, "198.51.100.31:80", "tcp", "drop"),
            ("node-1", "10.244.1.9", "198.51.100.31:80", "tcp", "drop"),
            ("node-1", "198.51.100.30", "198.51.100.31:80", "tcp", "drop"),
            ("node-1", "198.51.100.31", "198.51.100.30:80", "tcp", "drop"),
        ],
    );
}

#[test]
fn source_ranges_with_local_policy_and_without_endpoints() {
    let p = cluster()
        .svc(
            svc("default/fw-local", &["10.96.0.34"])
                .load_balancer()
                .http(Some(30102))
                .lb_ip("198.51.100.34", Vip)
                .source_ranges(&["203.0.113.0/24"])
                .etp_local(32034)
                .ep("10.244.1.34", "node-1"),
        )
        .svc(
            svc("default/fw-empty", &["10.96.0.35"])
                .load_balancer()
                .http(Some(30103))
                .lb_ip("198.51.100.35", Vip)
                .source_ranges(&["203.0.113.0/24"]),
        );
    check(
        &p,
        &[
            ("node-1", OUTSIDE, "198.51.100.34:80", "tcp", &format!("dnat 10.244.1.34:8080 seen {OUTSIDE}")),
            ("node-1", "198.18.0.1", "198.51.100.34:80", "tcp", "drop"),
            ("node-2", OUTSIDE, "198.51.100.34:80", "tcp", "drop"),
            ("node-2", "198.18.0.1", "198.51.100.34:80", "tcp", "drop"),
            ("node-2", "198.18.0.1", "10.240.0.4:30102", "tcp", "drop"),
            ("node-1", "198.18.0.1", "10.240.0.3:30102", "tcp", "dnat 10.244.1.34:8080 seen 198.18.0.1"),
            // No endpoints: allowed sources are rejected, the rest dropped first.
            ("node-1", OUTSIDE, "198.51.100.35:80", "tcp", "reject"),
            ("node-1", "198.18.0.1", "198.51.100.35:80", "tcp", "drop"),
            ("node-1", "198.18.0.1", "10.240.0.3:30103", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.35:80", "tcp", "reject"),
        ],
    );
}

#[test]
fn both_traffic_policies() {
    let p = cluster()
        .masquerade_all()
        .svc(
            svc("default/itp-np", &["10.96.0.36"])
                .node_port()
                .http(Some(30104))
                .itp_local()
                .ep("10.244.1.36", "node-1")
                .ep("10.244.2.36", "node-2"),
        )
        .svc(
            svc("default/all-local", &["10.96.0.37"])
                .node_port()
                .http(Some(30105))
                .itp_local()
                .etp_local(0)
                .ep("10.244.1.37", "node-1"),
        )
        .svc(
            svc("default/etp-only", &["10.96.0.38"])
                .node_port()
                .http(Some(30106))
                .etp_local(0)
                .ep("10.244.1.38", "node-1"),
        );
    let both = "10.244.1.36:8080,10.244.2.36:8080";
    check(
        &p,
        &[
            // internalTrafficPolicy local leaves external traffic cluster-wide.
            ("node-3", OUTSIDE, "10.240.0.5:30104", "tcp", &format!("dnat {both} masq seen 10.240.0.5")),
            ("node-3", "10.244.3.9", "10.240.0.5:30104", "tcp", &format!("dnat {both} masq seen 10.240.0.5")),
            ("node-3", "10.244.3.9", "10.96.0.36:80", "tcp", "drop"),
            ("node-1", "10.244.1.9", "10.96.0.36:80", "tcp", "dnat 10.244.1.36:8080 masq seen 10.244.1.1"),
            // Both local: outside clients only reach local endpoints, but pods and
            // the node are still short-circuited to every endpoint, as with
            // kube-proxy (its `UsesClusterEndpoints` keeps the cluster-wide set
            // for any externally accessible service).
            ("node-1", OUTSIDE, "10.240.0.3:30105", "tcp", &format!("dnat 10.244.1.37:8080 seen {OUTSIDE}")),
            ("node-1", "10.244.1.9", "10.240.0.3:30105", "tcp", "dnat 10.244.1.37:8080 seen 10.244.1.9"),
            ("node-1", "10.240.0.3", "10.240.0.3:30105", "tcp", "dnat 10.244.1.37:8080 masq seen 10.244.1.1"),
            ("node-3", OUTSIDE, "10.240.0.5:30105", "tcp", "drop"),
            ("node-3", "10.244.3.9", "10.240.0.5:30105", "tcp", "dnat 10.244.1.37:8080 seen 10.244.3.9"),
            ("node-3", "10.240.0.5", "10.240.0.5:30105", "tcp", "dnat 10.244.1.37:8080 masq seen 10.240.0.5"),
            ("node-3", "10.244.3.9", "10.96.0.37:80", "tcp", "drop"),
            // masquerade-all is about cluster IPs: eTP local keeps the client.
            ("node-1", OUTSIDE, "10.240.0.3:30106", "tcp", &format!("dnat 10.244.1.38:8080 seen {OUTSIDE}")),
            ("node-3", "10.244.3.9", "10.96.0.38:80", "tcp", "dnat 10.244.1.38:8080 masq seen 10.240.0.5"),
        ],
    );
}

fn internal_and_terminating(p: P) -> P {
    p.svc(
        svc("default/itp", &["10.96.0.40"])
            .http(None)
            .itp_local()
            .ep("10.244.1.12", "node-1")
            .ep("10.244.2.12", "node-2"),
    )
    .svc(
        svc("default/term", &["10.96.0.50"])
            .http(None)
            .ep_terminating("10.244.1.13", "node-1")
            .ep_terminating("10.244.2.13", "node-2")
            .ep_not_ready("10.244.3.13", "node-3"),
    )
    .svc(
        svc("default/term-mixed", &["10.96.0.51"])
            .http(None)
            .ep("10.244.2.14", "node-2")
            .ep_terminating("10.244.1.14", "node-1"),
    )
    .svc(
        svc("default/unusable", &["10.96.0.52"])
            .http(None)
            .ep_not_serving("10.244.1.15", "node-1")
            .ep_not_ready("10.244.2.15", "node-2"),
    )
    .svc(
        svc("default/term-local", &["10.96.0.53"])
            .node_port()
            .http(Some(30110))
            .etp_local(0)
            .ep_terminating("10.244.1.16", "node-1")
            .ep("10.244.2.16", "node-2"),
    )
    .svc(
        svc("default/itp-term", &["10.96.0.54"])
            .http(None)
            .itp_local()
            .ep_terminating("10.244.1.17", "node-1")
            .ep("10.244.2.17", "node-2"),
    )
    .svc(svc("default/remote", &["10.96.0.55"]).http(None).ep("10.244.9.9", ""))
}

#[test]
fn internal_traffic_policy_local() {
    let p = internal_and_terminating(cluster());
    check(
        &p,
        &[
            ("node-1", "10.244.1.9", "10.96.0.40:80", "tcp", "dnat 10.244.1.12:8080 seen 10.244.1.9"),
            ("node-2", "10.244.2.9", "10.96.0.40:80", "tcp", "dnat 10.244.2.12:8080 seen 10.244.2.9"),
            ("node-1", "10.240.0.3", "10.96.0.40:80", "tcp", "dnat 10.244.1.12:8080 masq seen 10.244.1.1"),
            ("node-1", OUTSIDE, "10.96.0.40:80", "tcp", "dnat 10.244.1.12:8080 masq seen 10.244.1.1"),
            ("node-3", "10.244.3.9", "10.96.0.40:80", "tcp", "drop"),
            ("node-3", "10.240.0.5", "10.96.0.40:80", "tcp", "drop"),
            ("node-3", OUTSIDE, "10.96.0.40:80", "tcp", "drop"),
            ("node-3", "10.244.3.9", "10.96.0.40:81", "tcp", "reject"),
            // The local set falls back to terminating endpoints of its own.
            ("node-1", "10.244.1.9", "10.96.0.54:80", "tcp", "dnat 10.244.1.17:8080 seen 10.244.1.9"),
            ("node-2", "10.244.2.9", "10.96.0.54:80", "tcp", "dnat 10.244.2.17:8080 seen 10.244.2.9"),
            ("node-3", "10.244.3.9", "10.96.0.54:80", "tcp", "drop"),
        ],
    );
}

#[test]
fn terminating_endpoints() {
    let p = internal_and_terminating(cluster());
    let term = "10.244.1.13:8080,10.244.2.13:8080";
    check(
        &p,
        &[
            // Nothing ready: serving terminating endpoints are used; not-ready never.
            ("node-1", "10.244.1.9", "10.96.0.50:80", "tcp", &format!("dnat {term} seen 10.244.1.9")),
            ("node-3", "10.244.3.9", "10.96.0.50:80", "tcp", &format!("dnat {term} seen 10.244.3.9")),
            ("node-3", OUTSIDE, "10.96.0.50:80", "tcp", &format!("dnat {term} masq seen 10.240.0.5")),
            // Something ready: terminating ones are not used.
            ("node-1", "10.244.1.9", "10.96.0.51:80", "tcp", "dnat 10.244.2.14:8080 seen 10.244.1.9"),
            ("node-2", "10.244.2.9", "10.96.0.51:80", "tcp", "dnat 10.244.2.14:8080 seen 10.244.2.9"),
            // Only unusable endpoints: as good as none.
            ("node-1", "10.244.1.9", "10.96.0.52:80", "tcp", "reject"),
            ("node-1", OUTSIDE, "10.96.0.52:80", "tcp", "reject"),
            ("node-2", "10.240.0.4", "10.96.0.52:80", "tcp", "reject"),
            // eTP local: the local set falls back on its own; the cluster set does not.
            ("node-1", OUTSIDE, "10.240.0.3:30110", "tcp", &format!("dnat 10.244.1.16:8080 seen {OUTSIDE}")),
            ("node-2", OUTSIDE, "10.240.0.4:30110", "tcp", &format!("dnat 10.244.2.16:8080 seen {OUTSIDE}")),
            ("node-3", OUTSIDE, "10.240.0.5:30110", "tcp", "drop"),
            ("node-3", "10.244.3.9", "10.240.0.5:30110", "tcp", "dnat 10.244.2.16:8080 seen 10.244.3.9"),
            ("node-1", "10.244.1.9", "10.96.0.53:80", "tcp", "dnat 10.244.2.16:8080 seen 10.244.1.9"),
            // An endpoint on no node is remote everywhere.
            ("node-1", "10.244.1.9", "10.96.0.55:80", "tcp", "dnat 10.244.9.9:8080 seen 10.244.1.9"),
            ("node-1", OUTSIDE, "10.96.0.55:80", "tcp", "dnat 10.244.9.9:8080 masq seen 10.240.0.3"),
        ],
    );
}

fn protocols(p: P) -> P {
    p.svc(
        svc("kube-system/dns", &["10.96.0.70"])
            .port(Some("dns"), "53/udp", None, None)
            .port(Some("dns-tcp"), "53/tcp", None, None)
            .ep("10.244.3.18", "node-3"),
    )
    .svc(
        svc("default/sctp", &["10.96.0.71"])
            .port(None, "9999/sctp", None, Some(30200))
            .node_port()
            .ep("10.244.2.19", "node-2"),
    )
    .svc(
        svc("default/named", &["10.96.0.72"])
            .port(Some("http"), "80/tcp", named("http"), None)
            .ep("10.244.1.20", "node-1"),
    )
    .svc(
        svc("default/mapped", &["10.96.0.73"])
            .port(Some("http"), "80/tcp", named("web"), None)
            .port(Some("admin"), "81/tcp", number(9000), None)
            .endpoint_port(Some("http"), 8081)
            .ep("10.244.1.21", "node-1"),
    )
    .svc(svc("default/bare", &["10.96.0.75"]).http(None).no_endpoints_block())
    .svc(
        svc("default/udp-np", &["10.96.0.74"])
            .node_port()
            .port(None, "5000/udp", number(5001), Some(30200))
            .ep("10.244.1.22", "node-1"),
    )
}

#[test]
fn udp_sctp_and_ports() {
    let p = protocols(cluster());
    check(
        &p,
        &[
            ("node-1", "10.244.1.9", "10.96.0.70:53", "udp", "dnat 10.244.3.18:53 seen 10.244.1.9"),
            ("node-1", "10.244.1.9", "10.96.0.70:53", "tcp", "dnat 10.244.3.18:53 seen 10.244.1.9"),
            ("node-1", "10.244.1.9", "10.96.0.70:53", "sctp", "reject"),
            ("node-1", "10.240.0.3", "10.96.0.70:53", "udp", "dnat 10.244.3.18:53 masq seen 10.240.0.3"),
            ("node-3", "10.244.3.18", "10.96.0.70:53", "udp", "dnat 10.244.3.18:53 masq seen 10.244.3.1"),
            ("node-2", "10.244.2.9", "10.96.0.71:9999", "sctp", "dnat 10.244.2.19:9999 seen 10.244.2.9"),
            ("node-2", "10.244.2.9", "10.96.0.71:9999", "tcp", "reject"),
            ("node-2", OUTSIDE, "10.240.0.4:30200", "sctp", "dnat 10.244.2.19:9999 masq seen 10.244.2.1"),
            // The same node port number for UDP is another service.
            ("node-2", OUTSIDE, "10.240.0.4:30200", "udp", "dnat 10.244.1.22:5001 masq seen 10.240.0.4"),
            ("node-2", OUTSIDE, "10.240.0.4:30200", "tcp", "pass"),
            // A named target no endpoints port resolves: no endpoints.
            ("node-1", "10.244.1.9", "10.96.0.72:80", "tcp", "reject"),
            ("node-1", "10.244.1.9", "10.96.0.73:80", "tcp", "dnat 10.244.1.21:8081 seen 10.244.1.9"),
            ("node-1", "10.244.1.9", "10.96.0.73:81", "tcp", "dnat 10.244.1.21:9000 seen 10.244.1.9"),
            ("node-1", "10.244.1.9", "10.96.0.73:82", "tcp", "reject"),
            // No endpoints block at all.
            ("node-1", "10.244.1.9", "10.96.0.75:80", "tcp", "reject"),
            ("node-1", OUTSIDE, "10.96.0.75:80", "tcp", "reject"),
        ],
    );
}

#[test]
fn host_network_endpoints() {
    // An endpoint on a node's own address is delivered locally there: no
    // postrouting, so the mark for masquerade has nothing to act on.
    let p = cluster().svc(svc("default/host", &["10.96.0.90"]).http(None).ep("10.240.0.4", "node-2"));
    check(
        &p,
        &[
            ("node-1", "10.244.1.9", "10.96.0.90:80", "tcp", "dnat 10.240.0.4:8080 seen 10.244.1.9"),
            ("node-1", OUTSIDE, "10.96.0.90:80", "tcp", "dnat 10.240.0.4:8080 masq seen 10.240.0.3"),
            ("node-1", "10.240.0.3", "10.96.0.90:80", "tcp", "dnat 10.240.0.4:8080 masq seen 10.240.0.3"),
            ("node-2", "10.244.2.9", "10.96.0.90:80", "tcp", "dnat 10.240.0.4:8080 seen 10.244.2.9"),
            ("node-2", OUTSIDE, "10.96.0.90:80", "tcp", &format!("dnat 10.240.0.4:8080 seen {OUTSIDE}")),
            ("node-2", "10.240.0.4", "10.96.0.90:80", "tcp", "dnat 10.240.0.4:8080 masq seen 10.240.0.4"),
        ],
    );
}

#[test]
fn traffic_distribution() {
    let p = cluster()
        .zone("node-1", "zone-a")
        .zone("node-2", "zone-a")
        .zone("node-3", "zone-b")
        .svc(
            svc("default/zonal", &["10.96.0.91"])
                .http(None)
                .distribution(PreferSameZone)
                .ep("10.244.1.30", "node-1")
                .ep("10.244.3.30", "node-3"),
        )
        .svc(
            svc("default/nodal", &["10.96.0.92"])
                .http(None)
                .distribution(PreferSameNode)
                .ep("10.244.1.31", "node-1")
                .ep("10.244.2.31", "node-2"),
        )
        .svc(svc("default/spread", &["10.96.0.93"]).http(None).ep("10.244.1.32", "node-1").ep("10.244.3.32", "node-3"));
    check(
        &p,
        &[
            ("node-1", "10.244.1.9", "10.96.0.91:80", "tcp", "dnat 10.244.1.30:8080 seen 10.244.1.9"),
            ("node-2", "10.244.2.9", "10.96.0.91:80", "tcp", "dnat 10.244.1.30:8080 seen 10.244.2.9"),
            ("node-3", "10.244.3.9", "10.96.0.91:80", "tcp", "dnat 10.244.3.30:8080 seen 10.244.3.9"),
            ("node-1", "10.244.1.9", "10.96.0.92:80", "tcp", "dnat 10.244.1.31:8080 seen 10.244.1.9"),
            ("node-2", "10.244.2.9", "10.96.0.92:80", "tcp", "dnat 10.244.2.31:8080 seen 10.244.2.9"),
            // No endpoint on node-3 and none in its zone: every endpoint.
            ("node-3", "10.244.3.9", "10.96.0.92:80", "tcp", "dnat 10.244.1.31:8080,10.244.2.31:8080 seen 10.244.3.9"),
            ("node-2", "10.244.2.9", "10.96.0.93:80", "tcp", "dnat 10.244.1.32:8080,10.244.3.32:8080 seen 10.244.2.9"),
        ],
    );
}

fn affinity() -> P {
    cluster().svc(
        svc("default/sticky", &["10.96.0.60"])
            .http(None)
            .affinity(10800)
            .ep("10.244.1.17", "node-1")
            .ep("10.244.2.17", "node-2"),
    )
}

#[test]
fn session_affinity() {
    let p = affinity();
    check(
        &p,
        &[("node-1", "10.244.3.9", "10.96.0.60:80", "tcp", "dnat 10.244.1.17:8080,10.244.2.17:8080 seen 10.244.3.9")],
    );
    let returning =
        |endpoint: &str| TraceOptions { returning_to: Some(trace::parse_destination(endpoint).expect("valid")) };
    check_with(
        &p,
        &returning("10.244.2.17:8080"),
        &[
            ("node-1", "10.244.3.9", "10.96.0.60:80", "tcp", "dnat 10.244.2.17:8080 seen 10.244.3.9"),
            ("node-2", "10.244.3.9", "10.96.0.60:80", "tcp", "dnat 10.244.2.17:8080 seen 10.244.3.9"),
            ("node-1", OUTSIDE, "10.96.0.60:80", "tcp", "dnat 10.244.2.17:8080 masq seen 10.240.0.3"),
            ("node-1", "10.244.3.9", "10.96.0.60:81", "tcp", "reject"),
        ],
    );
    check_with(
        &p,
        &returning("10.244.1.17:8080"),
        &[("node-1", "10.244.3.9", "10.96.0.60:80", "tcp", "dnat 10.244.1.17:8080 seen 10.244.3.9")],
    );
    // With eTP local, the cluster and local chains share each endpoint's set.
    let local = cluster().svc(
        svc("default/sticky-lb", &["10.96.0.61"])
            .load_balancer()
            .http(Some(30400))
            .lb_ip("198.51.100.61", Vip)
            .etp_local(32400)
            .affinity(60)
            .ep("10.244.1.18", "node-1")
            .ep("10.244.2.18", "node-2"),
    );
    check(
        &local,
        &[
            ("node-1", OUTSIDE, "198.51.100.61:80", "tcp", &format!("dnat 10.244.1.18:8080 seen {OUTSIDE}")),
            (
                "node-1",
                "10.244.3.9",
                "198.51.100.61:80",
                "tcp",
                "dnat 10.244.1.18:8080,10.244.2.18:8080 seen 10.244.3.9",
            ),
        ],
    );
    check_with(
        &local,
        &returning("10.244.2.18:8080"),
        &[
            ("node-1", "10.244.3.9", "198.51.100.61:80", "tcp", "dnat 10.244.2.18:8080 seen 10.244.3.9"),
            ("node-1", "10.244.3.9", "10.96.0.61:80", "tcp", "dnat 10.244.2.18:8080 seen 10.244.3.9"),
            ("node-2", OUTSIDE, "198.51.100.61:80", "tcp", &format!("dnat 10.244.2.18:8080 seen {OUTSIDE}")),
            // The local chain has no rule for a remote endpoint: a local one is drawn.
            ("node-1", OUTSIDE, "198.51.100.61:80", "tcp", &format!("dnat 10.244.1.18:8080 seen {OUTSIDE}")),
        ],
    );
    // Not an endpoint of this service: a new client.
    check_with(
        &p,
        &returning("10.244.9.9:8080"),
        &[("node-1", "10.244.3.9", "10.96.0.60:80", "tcp", "dnat 10.244.1.17:8080,10.244.2.17:8080 seen 10.244.3.9")],
    );
}

fn ipv6() -> P {
    policy(&["fd00:10::/56"], &["fd00:96::/112"])
        .node("node-1", &["2001:db8::3"], &["fd00:10:0:1::/64"])
        .node("node-2", &["2001:db8::4"], &["fd00:10:0:2::/64"])
        .svc(
            svc("default/web6", &["fd00:96::10"])
                .http(None)
                .ep("fd00:10:0:1::5", "node-1")
                .ep("fd00:10:0:2::5", "node-2"),
        )
        .svc(svc("default/np6", &["fd00:96::11"]).node_port().http(Some(30080)).ep("fd00:10:0:2::6", "node-2"))
        .svc(
            svc("default/lb6", &["fd00:96::12"])
                .load_balancer()
                .http(Some(30081))
                .lb_ip("2001:db8:ff::10", Vip)
                .etp_local(32001)
                .ep("fd00:10:0:1::7", "node-1"),
        )
        .svc(svc("default/empty6", &["fd00:96::13"]).http(None))
}

#[test]
fn ipv6_flows() {
    let p = ipv6();
    let both = "[fd00:10:0:1::5]:8080,[fd00:10:0:2::5]:8080";
    let out = "2001:db8:ff::99";
    check(
        &p,
        &[
            ("node-1", "fd00:10:0:1::9", "[fd00:96::10]:80", "tcp", &format!("dnat {both} seen fd00:10:0:1::9")),
            (
                "node-1",
                out,
                "[fd00:96::10]:80",
                "tcp",
                &format!(
                    "dnat {both} masq seen [fd00:10:0:1::5]:8080=fd00:10:0:1::1 [fd00:10:0:2::5]:8080=2001:db8::3"
                ),
            ),
            (
                "node-1",
                "2001:db8::3",
                "[fd00:96::10]:80",
                "tcp",
                &format!(
                    "dnat {both} masq seen [fd00:10:0:1::5]:8080=fd00:10:0:1::1 [fd00:10:0:2::5]:8080=2001:db8::3"
                ),
            ),
            (
                "node-1",
                "fd00:10:0:1::5",
                "[fd00:96::10]:80",
                "tcp",
                &format!(
                    "dnat {both} masq seen [fd00:10:0:1::5]:8080=fd00:10:0:1::1 [fd00:10:0:2::5]:8080=fd00:10:0:1::5"
                ),
            ),
            ("node-1", "fd00:10:0:1::9", "[fd00:96::10]:81", "tcp", "reject"),
            ("node-1", "fd00:10:0:1::9", "[fd00:96::99]:80", "tcp", "drop"),
            ("node-1", "fd00:10:0:1::9", "[fd00:96::13]:80", "tcp", "reject"),
            ("node-1", "fd00:10:0:1::9", "[fd00:97::10]:80", "tcp", "pass"),
            ("node-1", out, "[2001:db8::3]:30080", "tcp", "dnat [fd00:10:0:2::6]:8080 masq seen 2001:db8::3"),
            ("node-2", out, "[2001:db8::4]:30080", "tcp", "dnat [fd00:10:0:2::6]:8080 masq seen fd00:10:0:2::1"),
            ("node-1", out, "[2001:db8::3]:30080", "udp", "pass"),
            ("node-1", out, "[2001:db8:ff::10]:80", "tcp", &format!("dnat [fd00:10:0:1::7]:8080 seen {out}")),
            ("node-2", out, "[2001:db8:ff::10]:80", "tcp", "drop"),
            (
                "node-2",
                "fd00:10:0:2::9",
                "[2001:db8:ff::10]:80",
                "tcp",
                "dnat [fd00:10:0:1::7]:8080 seen fd00:10:0:2::9",
            ),
            ("node-2", "2001:db8::4", "[2001:db8::4]:30081", "tcp", "dnat [fd00:10:0:1::7]:8080 masq seen 2001:db8::4"),
            ("node-1", out, "[2001:db8::3]:30081", "tcp", &format!("dnat [fd00:10:0:1::7]:8080 seen {out}")),
            ("node-2", out, "[2001:db8::4]:30081", "tcp", "drop"),
            ("node-1", "fd00:10:0:1::9", "[fd00:96::11]:80", "udp", "reject"),
        ],
    );
}

#[test]
fn ipv6_node_port_addresses() {
    let all = ipv6().node_port_addresses(NodePortAddresses::All);
    check(
        &all,
        &[
            (
                "node-1",
                "2001:db8:ff::99",
                "[2001:db8::3]:30080",
                "tcp",
                "dnat [fd00:10:0:2::6]:8080 masq seen 2001:db8::3",
            ),
            ("node-1", "2001:db8::3", "[::1]:30080", "tcp", "pass"),
            ("node-1", "2001:db8:ff::99", "[2001:db8::4]:30080", "tcp", "pass"),
        ],
    );
    let cidrs = NodePortAddresses::Cidrs(vec!["2001:db8::/64".parse().expect("a prefix")]);
    check(
        &ipv6().node_port_addresses(cidrs),
        &[
            (
                "node-2",
                "2001:db8:ff::99",
                "[2001:db8::4]:30080",
                "tcp",
                "dnat [fd00:10:0:2::6]:8080 masq seen fd00:10:0:2::1",
            ),
            ("node-2", "2001:db8:ff::99", "[2001:db8::4]:30081", "tcp", "drop"),
        ],
    );
}

#[test]
fn dual_stack() {
    let p = cluster().node("node-6", &["10.240.0.6", "2001:db8::6"], &["10.244.6.0/24", "fd00:10:0:6::/64"]).svc(
        svc("default/dual", &["10.96.0.80", "fd00:96::80"])
            .node_port()
            .http(Some(30300))
            .ep("10.244.6.5", "node-6")
            .ep("fd00:10:0:6::5", "node-6"),
    );
    check(
        &p,
        &[
            ("node-6", "10.244.6.9", "10.96.0.80:80", "tcp", "dnat 10.244.6.5:8080 seen 10.244.6.9"),
            ("node-6", "fd00:10:0:6::9", "[fd00:96::80]:80", "tcp", "dnat [fd00:10:0:6::5]:8080 seen fd00:10:0:6::9"),
            ("node-6", OUTSIDE, "10.240.0.6:30300", "tcp", "dnat 10.244.6.5:8080 masq seen 10.244.6.1"),
            (
                "node-6",
                "2001:db8:ff::99",
                "[2001:db8::6]:30300",
                "tcp",
                "dnat [fd00:10:0:6::5]:8080 masq seen fd00:10:0:6::1",
            ),
            (
                "node-6",
                "2001:db8::6",
                "[2001:db8::6]:30300",
                "tcp",
                "dnat [fd00:10:0:6::5]:8080 masq seen fd00:10:0:6::1",
            ),
            ("node-1", "2001:db8:ff::99", "[fd00:96::80]:80", "tcp", "dnat [fd00:10:0:6::5]:8080 seen 2001:db8:ff::99"),
        ],
    );
}

/// DSL.md's worked example: the source-IP lab.
fn lab() -> P {
    policy(&["10.244.0.0/16"], &["10.0.0.0/16"])
        .node("node-1", &["10.240.0.3"], &["10.244.1.0/24"])
        .node("node-2", &["10.240.0.4"], &["10.244.2.0/24"])
        .node("node-3", &["10.240.0.5"], &["10.244.3.0/24"])
        .svc(svc("default/clusterip", &["10.0.170.92"]).http(None).ep("10.244.1.5", "node-1"))
        .svc(
            svc("default/nodeport", &["10.0.170.93"])
                .node_port()
                .http(Some(30080))
                .etp_local(0)
                .ep("10.244.1.5", "node-1"),
        )
        .svc(
            svc("default/loadbalancer", &["10.0.65.118"])
                .load_balancer()
                .lb_ip("198.51.100.140", Vip)
                .http(Some(30081))
                .etp_local(32122)
                .ep("10.244.1.5", "node-1"),
        )
}

#[test]
fn worked_example() {
    let p = lab();
    let ep = "10.244.1.5:8080";
    let client = "10.240.0.100";
    check(
        &p,
        &[
            ("node-1", "10.244.2.7", "10.0.170.92:80", "tcp", &format!("dnat {ep} seen 10.244.2.7")),
            ("node-2", "10.244.2.7", "10.0.170.92:80", "tcp", &format!("dnat {ep} seen 10.244.2.7")),
            ("node-3", "10.244.3.7", "10.0.170.92:80", "tcp", &format!("dnat {ep} seen 10.244.3.7")),
            ("node-1", "10.240.0.3", "10.0.170.92:80", "tcp", &format!("dnat {ep} masq seen 10.244.1.1")),
            ("node-2", "10.240.0.4", "10.0.170.92:80", "tcp", &format!("dnat {ep} masq seen 10.240.0.4")),
            ("node-3", "10.240.0.5", "10.0.170.92:80", "tcp", &format!("dnat {ep} masq seen 10.240.0.5")),
            ("node-1", "10.244.1.5", "10.0.170.92:80", "tcp", &format!("dnat {ep} masq seen 10.244.1.1")),
            ("node-1", client, "10.240.0.3:30080", "tcp", &format!("dnat {ep} seen {client}")),
            ("node-2", client, "10.240.0.4:30080", "tcp", "drop"),
            ("node-3", client, "10.240.0.5:30080", "tcp", "drop"),
            ("node-2", "10.244.2.7", "10.240.0.4:30080", "tcp", &format!("dnat {ep} seen 10.244.2.7")),
            ("node-2", "10.240.0.4", "10.240.0.4:30080", "tcp", &format!("dnat {ep} masq seen 10.240.0.4")),
            ("node-1", client, "198.51.100.140:80", "tcp", &format!("dnat {ep} seen {client}")),
            ("node-2", client, "198.51.100.140:80", "tcp", "drop"),
            ("node-3", client, "198.51.100.140:80", "tcp", "drop"),
            ("node-1", client, "10.240.0.3:30081", "tcp", &format!("dnat {ep} seen {client}")),
            ("node-3", client, "10.240.0.5:30081", "tcp", "drop"),
            ("node-3", "10.244.3.7", "198.51.100.140:80", "tcp", &format!("dnat {ep} seen 10.244.3.7")),
            ("node-1", client, "10.0.170.92:80", "tcp", &format!("dnat {ep} masq seen 10.244.1.1")),
            ("node-2", client, "10.0.9.9:80", "tcp", "drop"),
            ("node-3", client, "10.0.170.92:8080", "tcp", "reject"),
            ("node-1", client, "10.244.1.5:8080", "tcp", "pass"),
        ],
    );
}

#[test]
fn json_contract() {
    let p = lab();
    let trace = run(&p.0, "node-1", "10.240.0.3", "10.0.170.92:80", "tcp", &TraceOptions::default());
    let json = serde_json::to_value(&trace).expect("a trace serializes");
    assert_eq!(json["verdict"], "dnat");
    assert_eq!(json["endpoints"], serde_json::json!(["10.244.1.5:8080"]));
    assert_eq!(json["masquerade"], true);
    assert_eq!(json["source_seen"], "10.244.1.1");
    assert!(json["path"].as_array().is_some_and(|p| !p.is_empty()));
    let dropped = run(&p.0, "node-2", "10.240.0.100", "10.240.0.4:30080", "tcp", &TraceOptions::default());
    let json = serde_json::to_value(&dropped).expect("a trace serializes");
    assert_eq!(json["verdict"], "drop");
    assert_eq!(json["endpoints"], serde_json::json!([]));
    assert_eq!(json["source_seen"], serde_json::Value::Null);
    let v6 = run(&ipv6().0, "node-1", "fd00:10:0:1::9", "[fd00:96::10]:80", "tcp", &TraceOptions::default());
    let json = serde_json::to_value(&v6).expect("a trace serializes");
    assert_eq!(json["endpoints"], serde_json::json!(["[fd00:10:0:1::5]:8080", "[fd00:10:0:2::5]:8080"]));
}

#[test]
fn input_errors() {
    let from: IpAddr = "10.0.0.2".parse().expect("an address");
    let to = trace::parse_destination("[fd00::1]:80").expect("an IPv6 destination");
    assert!(matches!(
        Packet::new(from, to, svcnft_compiler::policy::Protocol::Tcp),
        Err(TraceError::FamilyMismatch { .. })
    ));
    for bad in ["10.0.0.1", "fd00::1:80", "10.0.0.1:0", "10.0.0.1:65536", "[10.0.0.1]:80", "host:80", ""] {
        assert!(matches!(trace::parse_destination(bad), Err(TraceError::Destination(_))), "{bad}");
    }
    assert!(matches!(trace::parse_protocol("icmp"), Err(TraceError::Protocol(_))));
    assert!(matches!(trace::parse_protocol("TCP"), Err(TraceError::Protocol(_))));
}

#[test]
fn human_output() {
    let p = lab();
    let none = TraceOptions::default();
    let cases = [
        ("clusterip-from-node", "node-1", "10.240.0.3", "10.0.170.92:80"),
        ("nodeport-local-dropped", "node-2", "10.240.0.100", "10.240.0.4:30080"),
        ("loadbalancer-local-kept", "node-1", "10.240.0.100", "198.51.100.140:80"),
        ("unallocated", "node-3", "10.244.3.7", "10.0.9.9:80"),
    ];
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots/trace");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for (name, node, from, to) in cases {
            insta::assert_snapshot!(name, run(&p.0, node, from, to, "tcp", &none).to_string());
        }
        let dropped = run(&p.0, "node-2", "10.240.0.100", "198.51.100.140:80", "tcp", &none);
        insta::assert_json_snapshot!("loadbalancer-local-dropped-json", dropped);
        let two = clusterip_services(cluster());
        insta::assert_snapshot!(
            "hairpin",
            run(&two.0, "node-1", "10.244.1.5", "10.96.0.10:80", "tcp", &none).to_string()
        );
    });
}
