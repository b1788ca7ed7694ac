//! The typed IR: a checked policy. Every value here has passed the rules of the
//! language, so later stages never re-validate and never see a span.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

/// A whole policy: the items of every file given on one command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Policy {
    pub cluster: Cluster,
    /// Declared nodes, in declaration order.
    pub nodes: Vec<Node>,
    /// Services in declaration order, each with its endpoints attached. Shared, so
    /// that the policy after an edit shares every service the edit left alone.
    pub services: Vec<Arc<Service>>,
}

impl Policy {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Cluster-wide settings (the `cluster { }` block; all optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// The local-traffic detector: sources inside count as pods. Empty means none.
    pub cluster_cidrs: Vec<IpNet>,
    /// Unallocated addresses inside these are dropped. Empty means no such rule.
    pub service_cidrs: Vec<IpNet>,
    pub node_port_addresses: NodePortAddresses,
    /// Inclusive range every node port and health-check node port lies in.
    pub node_port_range: (u16, u16),
    pub masquerade_all: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            node_port_addresses: NodePortAddresses::Primary,
            node_port_range: (30000, 32767),
            masquerade_all: false,
        }
    }
}

/// Which of a node's addresses accept NodePort traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodePortAddresses {
    /// The node's primary addresses (the first `address` of each family).
    Primary,
    /// Every local address except loopback.
    All,
    /// Every address of the node (primary or local) inside one of these.
    Cidrs(Vec<IpNet>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// In declaration order; the first of each family is the primary one.
    pub addresses: Vec<IpAddr>,
    pub local_addresses: Vec<IpAddr>,
    /// This node's pod networks; the first host address of each is the gateway.
    pub pod_cidrs: Vec<IpNet>,
    pub zone: Option<String>,
}

impl Node {
    /// The primary address of one family: the first `address` of it.
    pub fn primary(&self, family: Family) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| Family::of(*a) == family)
    }

    /// Every address this node owns: `address` then `local-address`.
    pub fn all_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().chain(&self.local_addresses).copied()
    }
}

/// `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficDistribution {
    PreferSameZone,
    PreferSameNode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: ServiceName,
    pub kind: ServiceType,
    /// At most one per family.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<LoadBalancerIp>,
    /// Allowed sources for load-balancer IPs; empty means any.
    pub source_ranges: Vec<IpNet>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<NonZeroU16>,
    /// Client-IP affinity timeout; `None` means no affinity.
    pub session_affinity: Option<Duration>,
    pub traffic_distribution: Option<TrafficDistribution>,
    /// The service's `endpoints` block, if any.
    pub endpoints: Option<Endpoints>,
}

impl Service {
    /// NodePort and LoadBalancer services, and any service with external IPs,
    /// take traffic from outside the cluster.
    pub fn externally_accessible(&self) -> bool {
        self.kind != ServiceType::ClusterIp || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoadBalancerIp {
    pub address: IpAddr,
    pub mode: LoadBalancerIpMode,
}

/// A load-balancer IP's `ipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerIpMode {
    /// The node accepts traffic to the VIP itself (programmed).
    Vip,
    /// The load balancer proxies to node ports: announced, not programmed.
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: NonZeroU16,
    pub protocol: Protocol,
    pub target: Option<TargetPort>,
    pub node_port: Option<NonZeroU16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetPort {
    Number(NonZeroU16),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `endpoints` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Endpoints {
    /// `port NAME PORT` statements; `None` names the unnamed single service port.
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: NonZeroU16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Shared by every endpoint on the node: one allocation per node, not per endpoint.
    pub node: Option<Arc<str>>,
    pub zone: Option<String>,
    pub conditions: Conditions,
    pub hint_zones: Vec<String>,
    pub hint_nodes: Vec<String>,
}

/// EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub const READY: Conditions = Conditions { ready: true, serving: true, terminating: false };

    /// Terminating but still serving: used only when nothing ready exists.
    pub fn serving_terminating(self) -> bool {
        self.serving && self.terminating
    }
}

/// An address family; one nftables table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of(net.addr())
    }
}
