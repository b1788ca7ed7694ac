//! UDP flows that conntrack would keep on a path the rules no longer take. A
//! UDP "connection" lives as long as its client keeps talking, so without help a
//! client keeps reaching a removed endpoint, or, if it talked to a node port or
//! service address before the service had endpoints, keeps missing the DNAT.
//!
//! As kube-proxy's `CleanStaleEntries`: a UDP flow to a service's address and
//! port, or to its node port on any address, is stale unless it is answered by
//! one of the service's serving endpoints, on any node. A service without any
//! keeps its flows (its new ones are refused anyway), and the flows of a
//! service or port that is gone are left to time out, as kube-proxy leaves them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use svcnft_compiler::plan::PortPlan;
use svcnft_compiler::policy::Protocol;
use svcnft_compiler::NodePlan;

use crate::netlink::{self as nl, Conntrack, Flow};

/// One UDP service port: where its flows go and who may answer them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpService {
    /// Service addresses and port: cluster IP, external and load-balancer IPs.
    pub destinations: Vec<SocketAddr>,
    /// Any address of the node on this port.
    pub node_port: Option<u16>,
    /// The addresses of the serving endpoints, sorted and never empty: a flow
    /// answered by any other address (a removed endpoint, or the destination
    /// itself when the flow was never DNATed) is stale.
    pub serving: Vec<IpAddr>,
}

impl UdpService {
    fn of(port: &PortPlan) -> Self {
        let addresses = std::iter::once(&port.cluster_ip).chain(&port.external_ips).chain(&port.load_balancer_ips);
        UdpService {
            destinations: addresses.map(|a| SocketAddr::new(*a, port.id.port)).collect(),
            node_port: port.node_port.map(|p| p.get()),
            serving: port.serving_endpoint_addresses.clone(),
        }
    }

    fn answers(&self, flow: &Flow) -> bool {
        self.serving.binary_search(&flow.reply.source.ip()).is_ok()
    }
}

/// The UDP service ports of `new` with serving endpoints whose flows may have
/// gone stale: every one after a start (`old` is `None`: flows outlive the
/// agent), else those whose plan changed. A port plan both plans share is
/// unchanged.
pub fn udp_services_to_clean(old: Option<&NodePlan>, new: &NodePlan) -> Vec<UdpService> {
    let shared: HashSet<*const PortPlan> = old.map_or_else(HashSet::new, |old| udp(old).map(Arc::as_ptr).collect());
    udp(new)
        .filter(|p| !shared.contains(&Arc::as_ptr(p)) && !p.serving_endpoint_addresses.is_empty())
        .map(|p| UdpService::of(p))
        .collect()
}

/// The UDP ports of a plan.
fn udp(plan: &NodePlan) -> impl Iterator<Item = &Arc<PortPlan>> {
    plan.families.iter().flat_map(|f| &f.ports).filter(|p| p.id.protocol == Protocol::Udp)
}

/// Deletes the stale flows of `services`; returns how many. Each flow is looked
/// up by its destination, then by its port, so the pass grows with the flows,
/// not with flows × services (a node joining re-plans every service).
pub fn remove_flows(services: &[UdpService]) -> Result<usize, nl::Error> {
    if services.is_empty() {
        return Ok(0);
    }
    let by_destination: HashMap<SocketAddr, &UdpService> =
        services.iter().flat_map(|s| s.destinations.iter().map(move |d| (*d, s))).collect();
    let by_node_port: HashMap<u16, &UdpService> = services.iter().filter_map(|s| Some((s.node_port?, s))).collect();
    let service_of = |flow: &Flow| {
        let destination = flow.original.destination;
        by_destination.get(&destination).or_else(|| by_node_port.get(&destination.port())).copied()
    };
    let mut conntrack = Conntrack::open()?;
    let mut removed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for flow in conntrack.flows(family)? {
            if flow.original.protocol != libc::IPPROTO_UDP as u8 {
                continue;
            }
            if service_of(&flow).is_some_and(|s| !s.answers(&flow)) {
                conntrack.delete(&flow)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use svcnft_compiler::SourceFile;

    fn plan(text: &str) -> NodePlan {
        let files = [SourceFile { name: "p.svc".into(), text: text.into() }];
        let checked = svcnft_compiler::check(&files).expect("valid policy");
        svcnft_compiler::plan(&checked.policy, "node-1").unwrap()
    }

    const POLICY: &str = "cluster { cluster-cidr 10.244.0.0/16 }
node node-1 { address 10.240.0.3; pod-cidr 10.244.1.0/24 }
node node-2 { address 10.240.0.4; pod-cidr 10.244.2.0/24 }
service kube-system/dns {
    type node-port
    cluster-ip 10.96.0.10
    external-ip 192.0.2.10
    port dns 53/udp target 5353 node-port 30053
    port dns-tcp 53/tcp target 5353
}
endpoints kube-system/dns {
    endpoint 10.244.1.2 node node-1
    ENDPOINT
}
";

    fn dns(endpoint: &str) -> NodePlan {
        plan(&POLICY.replace("ENDPOINT", endpoint))
    }

    #[test]
    fn every_udp_port_is_cleaned_after_a_start_and_only_changed_ones_after() {
        let old = dns("endpoint 10.244.1.3 node node-1");
        let all = udp_services_to_clean(None, &old);
        assert_eq!(
            all,
            [UdpService {
                destinations: vec!["10.96.0.10:53".parse().unwrap(), "192.0.2.10:53".parse().unwrap()],
                node_port: Some(30053),
                serving: vec!["10.244.1.2".parse().unwrap(), "10.244.1.3".parse().unwrap()],
            }],
            "the TCP port has no flows to clean"
        );
        assert!(udp_services_to_clean(Some(&old), &old).is_empty(), "nothing changed");
        let new = dns("");
        let changed = udp_services_to_clean(Some(&old), &new);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].serving, ["10.244.1.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_service_without_serving_endpoints_keeps_its_flows() {
        let not_ready = "endpoint 10.244.1.2 node node-1 not-ready";
        let none = plan(&POLICY.replace("endpoint 10.244.1.2 node node-1", not_ready).replace("ENDPOINT", ""));
        assert!(udp_services_to_clean(None, &none).is_empty());
    }

    #[test]
    fn serving_endpoints_anywhere_count_and_not_ready_ones_do_not() {
        let new = dns("endpoint 10.244.2.3 node node-2\n    endpoint 10.244.1.4 node node-1 not-ready");
        let [service] = <[UdpService; 1]>::try_from(udp_services_to_clean(None, &new)).unwrap();
        let serving: Vec<IpAddr> = ["10.244.1.2", "10.244.2.3"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(service.serving, serving);
    }
}
