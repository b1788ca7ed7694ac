//! UDP flows to endpoints that are gone: without help, conntrack keeps sending a
//! UDP client's packets to the removed endpoint for as long as it keeps talking.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use svcnft_compiler::plan::{PortId, PortPlan, Target};
use svcnft_compiler::policy::{Family, Protocol};
use svcnft_compiler::NodePlan;

use crate::netlink::{self as nl, Conntrack, Flow};

/// The flows of one removed endpoint of one UDP service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleEndpoint {
    /// Service addresses and port: cluster IP, external and load-balancer IPs.
    pub destinations: Vec<SocketAddr>,
    /// Any address of the node on this port.
    pub node_port: Option<u16>,
    pub endpoint: SocketAddr,
}

impl StaleEndpoint {
    fn matches(&self, flow: &Flow) -> bool {
        flow.original.protocol == libc::IPPROTO_UDP as u8
            && flow.reply.source == self.endpoint
            && (self.destinations.contains(&flow.original.destination)
                || self.node_port == Some(flow.original.destination.port()))
    }
}

/// Endpoints of UDP service ports that `old` used and `new` does not.
pub fn stale_udp_endpoints(old: &NodePlan, new: &NodePlan) -> Vec<StaleEndpoint> {
    let used = |port: &PortPlan| -> BTreeSet<Target> {
        port.cluster_endpoints.iter().chain(&port.local_endpoints).copied().collect()
    };
    // A port plan both plans share is unchanged; the others are looked up by id:
    // scanning the new plan for each old port was quadratic.
    let shared: HashSet<*const PortPlan> = udp(new).map(|(_, p)| Arc::as_ptr(p)).collect();
    let mut now: Option<HashMap<(Family, &PortId), &PortPlan>> = None;
    let mut stale = Vec::new();
    for (family, port) in udp(old).filter(|(_, p)| !shared.contains(&Arc::as_ptr(p))) {
        let now = now.get_or_insert_with(|| udp(new).map(|(family, p)| ((family, &p.id), &**p)).collect());
        let still: BTreeSet<Target> = now.get(&(family, &port.id)).map_or_else(BTreeSet::new, |p| used(p));
        let addresses = std::iter::once(&port.cluster_ip).chain(&port.external_ips).chain(&port.load_balancer_ips);
        let destinations: Vec<SocketAddr> = addresses.map(|a: &IpAddr| SocketAddr::new(*a, port.id.port)).collect();
        for endpoint in used(port).difference(&still) {
            stale.push(StaleEndpoint {
                destinations: destinations.clone(),
                node_port: port.node_port.map(|p| p.get()),
                endpoint: endpoint.socket_addr(),
            });
        }
    }
    stale
}

/// The UDP ports of a plan, with their family.
fn udp(plan: &NodePlan) -> impl Iterator<Item = (Family, &Arc<PortPlan>)> {
    plan.families
        .iter()
        .flat_map(|f| f.ports.iter().map(move |p| (f.family, p)))
        .filter(|(_, p)| p.id.protocol == Protocol::Udp)
}

/// Deletes the flows of `stale` endpoints; returns how many.
pub fn remove_flows(stale: &[StaleEndpoint]) -> Result<usize, nl::Error> {
    if stale.is_empty() {
        return Ok(0);
    }
    let mut conntrack = Conntrack::open()?;
    let mut removed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for flow in conntrack.flows(family)? {
            if stale.iter().any(|s| s.matches(&flow)) {
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

    #[test]
    fn a_removed_udp_endpoint_is_stale_with_every_service_destination() {
        let old = plan(&POLICY.replace("ENDPOINT", "endpoint 10.244.1.3 node node-1"));
        let new = plan(&POLICY.replace("ENDPOINT", ""));
        let stale = stale_udp_endpoints(&old, &new);
        assert_eq!(
            stale,
            [StaleEndpoint {
                destinations: vec!["10.96.0.10:53".parse().unwrap(), "192.0.2.10:53".parse().unwrap()],
                node_port: Some(30053),
                endpoint: "10.244.1.3:5353".parse().unwrap(),
            }]
        );
        assert!(stale_udp_endpoints(&new, &old).is_empty(), "an added endpoint leaves nothing stale");
    }
}
