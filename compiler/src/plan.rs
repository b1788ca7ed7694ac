//! Node planning: what one node must do with each service port, decided once, in
//! the terms of kube-proxy's nftables mode (endpoint categorisation, traffic
//! policies, no-endpoint verdicts). Lowering turns this into rules without making
//! any further decision about Service semantics.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::policy::{
    Endpoint, Family, LoadBalancerIpMode, Node, NodePortAddresses, Policy, Protocol, Service, ServiceName, ServicePort,
    TargetPort, TrafficDistribution, TrafficPolicy,
};

/// Everything one node needs, per address family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    pub node: Node,
    pub families: Vec<FamilyPlan>,
    /// Health-check node ports this node serves (for the agent).
    pub health_checks: Vec<HealthCheck>,
}

/// One family's share of a node plan: one nftables table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FamilyPlan {
    pub family: Family,
    /// Sources inside these are pods (the local-traffic detector); empty = no detector.
    pub cluster_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    pub node_ports_on: NodePortScope,
    /// Shared, so that the plan after an edit shares every port the edit left alone.
    pub ports: Vec<Arc<PortPlan>>,
}

/// Which destinations count as this node for NodePort traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodePortScope {
    /// Every local address but loopback (`fib daddr type local`).
    AllLocal,
    /// Exactly these addresses.
    Addresses(Vec<IpAddr>),
}

/// Identifies a service port in one family: `ns/name port/proto`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortId {
    pub service: ServiceName,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.service, self.port, self.protocol)
    }
}

/// Which endpoint set a packet is load-balanced over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointSet {
    Cluster,
    Local,
}

/// What the filter chains do to traffic that has no endpoint to go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// No usable endpoint anywhere: ICMP port unreachable.
    Reject,
    /// Endpoints exist, but none this traffic may use (a Local policy).
    Drop,
}

/// Where traffic to the cluster IP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    To(EndpointSet),
    Refuse(Refusal),
}

/// How traffic to a node port, external IP or load-balancer IP is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExternalRoute {
    /// The service has no usable endpoint: reject before any DNAT.
    Reject,
    /// An external-traffic chain exists.
    Chain(ExternalChain),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExternalChain {
    /// externalTrafficPolicy cluster: everything is masqueraded.
    pub masquerade: bool,
    /// externalTrafficPolicy local: pods (with a detector) and the node itself go to
    /// the cluster-wide endpoints instead; the node is masqueraded.
    pub short_circuit: bool,
    /// Where the remaining traffic goes; `None` falls through to the filter drop.
    pub target: Option<EndpointSet>,
    /// Set when the remaining traffic has no endpoint (Local policy, none here).
    pub refuse: Option<Refusal>,
}

/// One DNAT destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub address: IpAddr,
    pub port: NonZeroU16,
}

impl Target {
    pub fn socket_addr(self) -> SocketAddr {
        SocketAddr::new(self.address, self.port.get())
    }
}

/// What the node does with one service port in one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPlan {
    pub id: PortId,
    pub cluster_ip: IpAddr,
    pub external_ips: Vec<IpAddr>,
    /// Programmed (ipMode VIP) load-balancer IPs.
    pub load_balancer_ips: Vec<IpAddr>,
    pub node_port: Option<NonZeroU16>,
    /// Allowed sources for the load-balancer IPs (with the IPs themselves when a
    /// node address is inside a range); empty = no firewall.
    pub source_ranges: Vec<IpNet>,
    pub allow_from_lb_ips: bool,
    pub session_affinity: Option<Duration>,
    /// Endpoints used under the Cluster policy; empty when no chain is needed.
    pub cluster_endpoints: Vec<Target>,
    /// Endpoints used under the Local policy; empty when no chain is needed.
    pub local_endpoints: Vec<Target>,
    pub internal: Route,
    /// `None` for ports nothing outside the cluster reaches.
    pub external: Option<ExternalRoute>,
    /// Every endpoint address of this family, usable or not: hairpin candidates.
    pub all_endpoint_addresses: Vec<IpAddr>,
    /// Addresses of this family's serving endpoints (ready, or terminating and
    /// serving) on any node: the only ones a UDP flow to the service may reach.
    pub serving_endpoint_addresses: Vec<IpAddr>,
}

impl PortPlan {
    pub fn endpoints(&self, set: EndpointSet) -> &[Target] {
        match set {
            EndpointSet::Cluster => &self.cluster_endpoints,
            EndpointSet::Local => &self.local_endpoints,
        }
    }
}

/// A health-check node port (eTP local load balancers), with what to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub service: ServiceName,
    pub port: NonZeroU16,
    /// Ready endpoints on this node, across the service's ports and families.
    pub local_endpoints: usize,
    /// Listen addresses (the node-port addresses); empty = every local address.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown node `{0}`: the policy declares {1}")]
    UnknownNode(String, String),
}

/// Plans the policy for one node.
pub fn plan(policy: &Policy, node_name: &str) -> Result<NodePlan, PlanError> {
    Planning::default().plan(policy, node_name)
}

/// Planning that remembers what it planned: a service the policy shares with the
/// last policy planned (the same `Arc`) keeps its port plans, the same `Arc`s,
/// while the node and the nodes are the same. An edit then plans only the
/// services it touched. The result is always that of [`plan`].
#[derive(Debug, Default)]
pub struct Planning {
    /// The nodes of the last policy, and the node planned for: a port's plan
    /// depends on these (endpoint locality, topology) and on its service alone.
    nodes: Vec<Node>,
    node: String,
    /// Per service of the last policy, in its order.
    services: Vec<Planned>,
}

#[derive(Debug)]
struct Planned {
    /// Held, so that no other service can take its address while it is remembered.
    service: Arc<Service>,
    /// Its port plans, per family (in [`Family::ALL`] order).
    ports: [Vec<Arc<PortPlan>>; 2],
    /// Whether it has a cluster IP of each family.
    families: [bool; 2],
    /// Its health-check node port, and its ready endpoints on the node.
    health_check: Option<(NonZeroU16, usize)>,
}

impl Planned {
    fn new(policy: &Policy, node: &Node, svc: &Arc<Service>) -> Self {
        let health_check = svc.health_check_node_port.map(|port| {
            let local = svc
                .endpoints
                .iter()
                .flat_map(|e| &e.endpoints)
                .filter(|e| e.conditions.ready && e.node.as_deref() == Some(node.name.as_str()))
                .map(|e| e.address)
                .collect::<BTreeSet<_>>();
            (port, local.len())
        });
        Planned {
            service: svc.clone(),
            ports: Family::ALL.map(|family| plan_service(policy, node, family, svc)),
            families: Family::ALL.map(|family| svc.cluster_ips.iter().any(|ip| Family::of(*ip) == family)),
            health_check,
        }
    }
}

impl Planning {
    pub fn plan(&mut self, policy: &Policy, node_name: &str) -> Result<NodePlan, PlanError> {
        let node = find_node(policy, node_name)?;
        let previous = if self.node == node_name && self.nodes == policy.nodes {
            std::mem::take(&mut self.services)
        } else {
            Vec::new()
        };
        // Services usually keep their place; those that moved are found by address.
        let mut taken: Vec<Option<Planned>> = previous.into_iter().map(Some).collect();
        let mut by_address: Option<FxHashMap<*const Service, usize>> = None;
        let services: Vec<Planned> = policy
            .services
            .iter()
            .enumerate()
            .map(|(at, svc)| {
                let in_place = taken.get(at).is_some_and(|p| p.as_ref().is_some_and(|p| Arc::ptr_eq(&p.service, svc)));
                let kept = if in_place {
                    taken[at].take()
                } else {
                    let index = by_address.get_or_insert_with(|| {
                        taken
                            .iter()
                            .enumerate()
                            .filter_map(|(i, p)| Some((Arc::as_ptr(&p.as_ref()?.service), i)))
                            .collect()
                    });
                    index.get(&Arc::as_ptr(svc)).and_then(|&i| taken[i].take())
                };
                kept.unwrap_or_else(|| Planned::new(policy, node, svc))
            })
            .collect();
        let plan = assemble(policy, node, &services);
        self.node = node_name.to_owned();
        self.nodes = policy.nodes.clone();
        self.services = services;
        Ok(plan)
    }
}

fn find_node<'p>(policy: &'p Policy, node_name: &str) -> Result<&'p Node, PlanError> {
    policy.node(node_name).ok_or_else(|| {
        let known: Vec<_> = policy.nodes.iter().map(|n| format!("`{}`", n.name)).collect();
        let known = if known.is_empty() { "no nodes".to_string() } else { known.join(", ") };
        PlanError::UnknownNode(node_name.to_string(), known)
    })
}

/// The node plan of the planned `services`.
fn assemble(policy: &Policy, node: &Node, services: &[Planned]) -> NodePlan {
    let families = Family::ALL
        .into_iter()
        .enumerate()
        .filter(|(at, _)| services.iter().any(|s| s.families[*at]))
        .map(|(at, family)| {
            let ports = services.iter().flat_map(|s| s.ports[at].iter().cloned()).collect();
            plan_family(policy, node, family, ports)
        })
        .collect();
    NodePlan { node: node.clone(), families, health_checks: health_checks(policy, node, services) }
}

/// The plans of a service's ports in one family; none without a cluster IP of it.
fn plan_service(policy: &Policy, node: &Node, family: Family, svc: &Service) -> Vec<Arc<PortPlan>> {
    let Some(cluster_ip) = svc.cluster_ips.iter().copied().find(|ip| Family::of(*ip) == family) else {
        return Vec::new();
    };
    svc.ports.iter().map(|port| Arc::new(plan_port(policy, node, family, svc, port, cluster_ip))).collect()
}

fn plan_family(policy: &Policy, node: &Node, family: Family, ports: Vec<Arc<PortPlan>>) -> FamilyPlan {
    let of_family =
        |nets: &[IpNet]| -> Vec<IpNet> { nets.iter().filter(|n| Family::of_net(n) == family).copied().collect() };
    let cluster = &policy.cluster;
    let node_ports_on = match &cluster.node_port_addresses {
        NodePortAddresses::All => NodePortScope::AllLocal,
        NodePortAddresses::Primary => NodePortScope::Addresses(node.primary(family).into_iter().collect()),
        NodePortAddresses::Cidrs(cidrs) => NodePortScope::Addresses(
            node.all_addresses().filter(|a| Family::of(*a) == family && cidrs.iter().any(|c| c.contains(a))).collect(),
        ),
    };
    FamilyPlan {
        family,
        cluster_cidrs: of_family(&cluster.cluster_cidrs),
        service_cidrs: of_family(&cluster.service_cidrs),
        masquerade_all: cluster.masquerade_all,
        node_ports_on,
        ports,
    }
}

fn plan_port(
    policy: &Policy,
    node: &Node,
    family: Family,
    svc: &Service,
    port: &ServicePort,
    cluster_ip: IpAddr,
) -> PortPlan {
    let in_family = |a: &IpAddr| Family::of(*a) == family;
    let endpoints: Vec<&Endpoint> =
        svc.endpoints.iter().flat_map(|e| &e.endpoints).filter(|e| in_family(&e.address)).collect();
    let target_port = dnat_port(svc, port);
    let sorted_targets = |eps: Vec<&Endpoint>| -> Vec<Target> {
        let Some(port) = target_port else { return Vec::new() };
        let set: BTreeSet<Target> = eps.into_iter().map(|e| Target { address: e.address, port }).collect();
        set.into_iter().collect()
    };
    let usable: Vec<&Endpoint> = if target_port.is_some() { endpoints.clone() } else { Vec::new() };
    let categories = categorize(policy, node, svc, &usable);

    let external_local = svc.externally_accessible() && svc.external_traffic_policy == TrafficPolicy::Local;
    let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
    let cluster_endpoints = if categories.uses_cluster { sorted_targets(categories.cluster) } else { Vec::new() };
    let local_endpoints = if categories.uses_local { sorted_targets(categories.local) } else { Vec::new() };
    let has_endpoints = categories.any_usable;

    let internal = if !has_endpoints {
        Route::Refuse(Refusal::Reject)
    } else if internal_local {
        if local_endpoints.is_empty() {
            Route::Refuse(Refusal::Drop)
        } else {
            Route::To(EndpointSet::Local)
        }
    } else {
        Route::To(EndpointSet::Cluster)
    };
    let external = svc.externally_accessible().then(|| {
        if !has_endpoints {
            return ExternalRoute::Reject;
        }
        if !external_local {
            return ExternalRoute::Chain(ExternalChain {
                masquerade: true,
                short_circuit: false,
                target: Some(EndpointSet::Cluster),
                refuse: None,
            });
        }
        let has_local = !local_endpoints.is_empty();
        ExternalRoute::Chain(ExternalChain {
            masquerade: false,
            short_circuit: !cluster_endpoints.is_empty(),
            target: has_local.then_some(EndpointSet::Local),
            refuse: (!has_local).then_some(Refusal::Drop),
        })
    });

    let load_balancer_ips: Vec<IpAddr> = svc
        .load_balancer_ips
        .iter()
        .filter(|lb| lb.mode == LoadBalancerIpMode::Vip)
        .map(|lb| lb.address)
        .filter(in_family)
        .collect();
    let source_ranges: Vec<IpNet> = svc.source_ranges.iter().filter(|n| Family::of_net(n) == family).copied().collect();
    let allow_from_lb_ips =
        !source_ranges.is_empty() && node.addresses.iter().any(|a| source_ranges.iter().any(|r| r.contains(a)));
    let all_endpoint_addresses: BTreeSet<IpAddr> = endpoints.iter().map(|e| e.address).collect();
    let serving_endpoint_addresses: BTreeSet<IpAddr> =
        usable.iter().filter(|e| e.conditions.ready || e.conditions.serving_terminating()).map(|e| e.address).collect();

    PortPlan {
        id: PortId { service: svc.name.clone(), port: port.port.get(), protocol: port.protocol },
        cluster_ip,
        external_ips: svc.external_ips.iter().copied().filter(in_family).collect(),
        load_balancer_ips,
        node_port: port.node_port.filter(|_| svc.kind != crate::policy::ServiceType::ClusterIp),
        source_ranges,
        allow_from_lb_ips,
        session_affinity: svc.session_affinity,
        cluster_endpoints,
        local_endpoints,
        internal,
        external,
        all_endpoint_addresses: all_endpoint_addresses.into_iter().collect(),
        serving_endpoint_addresses: serving_endpoint_addresses.into_iter().collect(),
    }
}

/// The DNAT port: the endpoints block's `port` for this service port, else a
/// numeric target, else the port itself; `None` for an unresolved named target.
pub fn dnat_port(svc: &Service, port: &ServicePort) -> Option<NonZeroU16> {
    let declared = svc.endpoints.as_ref().and_then(|e| {
        e.ports.iter().find(|p| match (&p.name, &port.name) {
            (Some(a), Some(b)) => a == b,
            (None, _) => svc.ports.len() == 1,
            _ => false,
        })
    });
    if let Some(p) = declared {
        return Some(p.port);
    }
    match &port.target {
        None => Some(port.port),
        Some(TargetPort::Number(n)) => Some(*n),
        Some(TargetPort::Name(_)) => None,
    }
}

struct Categories<'a> {
    uses_cluster: bool,
    uses_local: bool,
    cluster: Vec<&'a Endpoint>,
    local: Vec<&'a Endpoint>,
    any_usable: bool,
}

/// kube-proxy's `CategorizeEndpoints`: the cluster-wide set (ready, topology-aware,
/// else serving-terminating) and the local set (ready, else serving-terminating).
fn categorize<'a>(policy: &Policy, node: &Node, svc: &Service, endpoints: &[&'a Endpoint]) -> Categories<'a> {
    let external_local = svc.externally_accessible() && svc.external_traffic_policy == TrafficPolicy::Local;
    let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
    // kube-proxy's `UsesClusterEndpoints`: an externally accessible service needs
    // the cluster-wide set even when both policies are local, since pods and the
    // node reaching its external addresses are short-circuited to it.
    let uses_cluster = !internal_local || svc.externally_accessible();
    let uses_local = external_local || internal_local;
    let is_local = |e: &Endpoint| e.node.as_deref() == Some(node.name.as_str());

    let mut any_usable = false;
    let mut cluster = Vec::new();
    if uses_cluster {
        let hints = Hints::for_service(policy, svc);
        let mode = topology_mode(&hints, endpoints, node);
        let in_topology = |e: &Endpoint| match mode {
            None => true,
            Some(TrafficDistribution::PreferSameNode) => hints.nodes(e).iter().any(|n| *n == node.name),
            Some(TrafficDistribution::PreferSameZone) => {
                node.zone.as_ref().is_some_and(|z| hints.zones(e).contains(&z.as_str()))
            }
        };
        cluster = endpoints.iter().copied().filter(|e| e.conditions.ready && in_topology(e)).collect();
        if cluster.is_empty() {
            cluster =
                endpoints.iter().copied().filter(|e| e.conditions.serving_terminating() && in_topology(e)).collect();
        }
        any_usable = !cluster.is_empty();
    }
    let mut local = Vec::new();
    if uses_local {
        any_usable |= endpoints.iter().any(|e| e.conditions.ready || e.conditions.serving_terminating());
        local = endpoints.iter().copied().filter(|e| is_local(e) && e.conditions.ready).collect();
        if local.is_empty() {
            local = endpoints.iter().copied().filter(|e| is_local(e) && e.conditions.serving_terminating()).collect();
        }
    }
    Categories { uses_cluster, uses_local, cluster, local, any_usable }
}

/// Topology hints of a service's endpoints: explicit `hint-zones`/`hint-nodes`, or
/// those an EndpointSlice controller derives from `traffic-distribution` (the
/// endpoint's zone — its own or its node's — and, for prefer-same-node, its node).
struct Hints<'p> {
    policy: &'p Policy,
    distribution: Option<TrafficDistribution>,
}

impl<'p> Hints<'p> {
    fn for_service(policy: &'p Policy, svc: &Service) -> Self {
        Hints { policy, distribution: svc.traffic_distribution }
    }

    fn zones<'e>(&self, e: &'e Endpoint) -> Vec<&'e str>
    where
        'p: 'e,
    {
        if !e.hint_zones.is_empty() || self.distribution.is_none() {
            return e.hint_zones.iter().map(String::as_str).collect();
        }
        let node_zone = e.node.as_deref().and_then(|n| self.policy.node(n)).and_then(|n| n.zone.as_deref());
        e.zone.as_deref().or(node_zone).into_iter().collect()
    }

    fn nodes<'e>(&self, e: &'e Endpoint) -> Vec<&'e str> {
        if !e.hint_nodes.is_empty() || self.distribution != Some(TrafficDistribution::PreferSameNode) {
            return e.hint_nodes.iter().map(String::as_str).collect();
        }
        e.node.as_deref().into_iter().collect()
    }
}

/// kube-proxy's `topologyModeFromHints`: node hints win when every ready endpoint
/// has one and one names this node; else zone hints likewise; else no topology.
fn topology_mode(hints: &Hints, endpoints: &[&Endpoint], node: &Node) -> Option<TrafficDistribution> {
    let ready: Vec<&Endpoint> = endpoints.iter().copied().filter(|e| e.conditions.ready).collect();
    let all_node_hints = ready.iter().all(|e| !hints.nodes(e).is_empty());
    let for_node = ready.iter().any(|e| hints.nodes(e).contains(&node.name.as_str()));
    if all_node_hints && for_node {
        return Some(TrafficDistribution::PreferSameNode);
    }
    let all_zone_hints = ready.iter().all(|e| !hints.zones(e).is_empty());
    let for_zone = node.zone.as_deref().is_some_and(|z| ready.iter().any(|e| hints.zones(e).contains(&z)));
    (all_zone_hints && for_zone).then_some(TrafficDistribution::PreferSameZone)
}

fn health_checks(policy: &Policy, node: &Node, services: &[Planned]) -> Vec<HealthCheck> {
    let addresses = match &policy.cluster.node_port_addresses {
        NodePortAddresses::All => Vec::new(),
        NodePortAddresses::Primary => Family::ALL.iter().filter_map(|f| node.primary(*f)).collect(),
        NodePortAddresses::Cidrs(cidrs) => {
            node.all_addresses().filter(|a| cidrs.iter().any(|c| c.contains(a))).collect()
        }
    };
    services
        .iter()
        .filter_map(|planned| {
            let (port, local_endpoints) = planned.health_check?;
            let service = planned.service.name.clone();
            Some(HealthCheck { service, port, local_endpoints, addresses: addresses.clone() })
        })
        .collect()
}
