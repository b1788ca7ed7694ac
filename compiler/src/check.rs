//! The checker: builds the typed [`Policy`] from the ASTs of every file of a policy
//! and enforces every rule of the language, reporting all errors it finds.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;
use svcnft_grammar::{
    BrokenItem, ClusterStmt, EndpointOption, EndpointStmt, EndpointsStmt, File, Item, ItemKind, NodeStmt, PortOption,
    PortStmt, QualifiedName, Recovered, ServiceStmt, Span, Stmt, Word,
};

use crate::diagnostics::{Diagnostics, Severity, SourceFile};

mod incremental;
use crate::policy::{
    Cluster, Conditions, Endpoint, EndpointPort, Endpoints, Family, LoadBalancerIp, LoadBalancerIpMode, Node,
    NodePortAddresses, Policy, Protocol, Service, ServiceName, ServicePort, ServiceType, TargetPort,
    TrafficDistribution, TrafficPolicy,
};
pub use incremental::Incremental;

/// A valid policy, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Policy,
    pub warnings: Diagnostics,
}

/// Session affinity timeout when `session-affinity client-ip` gives none (Kubernetes').
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);
const MAX_AFFINITY_TIMEOUT: u64 = 86400;
const MAX_NAME: usize = 63;
const MAX_NODE_NAME: usize = 253;

/// Parses and checks the files of one policy together, reporting every error:
/// the syntax error of each item that does not parse, and what the checks find
/// in the items that do.
pub fn check(files: &[SourceFile]) -> Result<Checked, Diagnostics> {
    let parsed: Vec<_> = files.iter().map(|file| svcnft_grammar::parse_recovering(&file.text)).collect();
    check_linked(parsed.iter().map(Result::as_ref)).0
}

/// Checks the parses of a policy's files, in file order, and, for a valid
/// policy, says what an incremental check of the next edit needs to know of
/// this one. The checks skip what follows only from a broken item: a node or
/// service it declared is not reported missing, and without the cluster block
/// node ports are not held to a range.
fn check_linked<'a>(
    parsed: impl IntoIterator<Item = Result<&'a File, &'a Recovered>>,
) -> (Result<Checked, Diagnostics>, Option<Links>) {
    let mut checker = Checker::default();
    let mut items: Vec<(usize, &Item)> = Vec::new();
    for (index, file) in parsed.into_iter().enumerate() {
        let ast = match file {
            Ok(ast) => ast,
            Err(recovered) => {
                for e in &recovered.errors {
                    checker.diags.push(Severity::Error, index, e.span, e.message.clone());
                }
                checker.broken.extend(&recovered.broken);
                &recovered.file
            }
        };
        items.extend(ast.items.iter().map(|item| (index, item)));
    }
    checker.policy(&items);
    let mut diags = checker.diags;
    diags.sort();
    if diags.errors() > 0 {
        return (Err(diags), None);
    }
    let mut policy = checker.out;
    policy.services = checker.services.into_iter().map(Arc::new).collect();
    let links = Links {
        node_names: checker.node_names,
        service_items: checker.service_items,
        endpoints_items: checker.endpoints_items,
        named_targets: checker.named_targets,
    };
    (Ok(Checked { policy, warnings: diags }), Some(links))
}

/// How the items of a valid policy relate, beyond what the [`Policy`] says.
#[derive(Debug, Clone)]
struct Links {
    node_names: FxHashSet<Arc<str>>,
    /// Per service: the index of its item among all items of the policy.
    service_items: Vec<usize>,
    /// Per `endpoints` item (by item index): the service it belongs to.
    endpoints_items: FxHashMap<usize, usize>,
    /// Per service: its target ports given as names (port index, where).
    named_targets: Vec<Vec<(usize, Origin)>>,
}

/// Where a declaration came from, for rules that span several items.
#[derive(Debug, Clone, Copy)]
struct Origin {
    file: usize,
    span: Span,
}

/// The checker's tables borrow names from the AST (`'a`) and hash with Fx: at 10k
/// services, copying names into them and SipHash took a third of the check.
#[derive(Default)]
struct Checker<'a> {
    diags: Diagnostics,
    /// The file of the item being checked.
    file: usize,
    /// The index of the item being checked among all items.
    item: usize,
    /// Where that item starts in its file: the spans inside it count from there.
    base: usize,
    out: Policy,
    /// `out`'s services while they are checked; shared once done.
    services: Vec<Service>,
    /// Per service: the index of its item.
    service_items: Vec<usize>,
    /// Per `endpoints` item: the service it belongs to.
    endpoints_items: FxHashMap<usize, usize>,
    /// Node ports and health-check node ports in use, per protocol, and their service.
    node_ports: FxHashMap<(Protocol, u16), NameRef<'a>>,
    cluster_ips: FxHashMap<IpAddr, NameRef<'a>>,
    /// Where each declared service is in `services`: looking names up by
    /// scanning made checking 10k services take seconds.
    service_index: FxHashMap<NameRef<'a>, usize>,
    /// The names in `out.nodes`, shared with their endpoints: every endpoint names
    /// a node, and scanning the nodes for each of 100k endpoints took a tenth of
    /// checking 10k services.
    node_names: FxHashSet<Arc<str>>,
    /// Services with an `endpoints` block already.
    with_endpoints: FxHashSet<usize>,
    /// Per service (by index): the spans of target ports given as names.
    named_targets: Vec<Vec<(usize, Origin)>>,
    /// What the items that did not parse declared.
    broken: Broken<'a>,
}

/// The declarations of items with syntax errors, which the checks must not
/// report as missing.
#[derive(Default)]
struct Broken<'a> {
    nodes: FxHashSet<&'a str>,
    /// As written, `namespace/name`.
    services: FxHashSet<&'a str>,
    cluster: bool,
}

impl<'a> Broken<'a> {
    fn extend(&mut self, items: &'a [BrokenItem]) {
        for item in items {
            let name = item.name.as_deref().unwrap_or_default();
            match item.keyword.as_str() {
                "cluster" => self.cluster = true,
                "node" => _ = self.nodes.insert(name),
                "service" => _ = self.services.insert(name),
                _ => {}
            }
        }
    }
}

impl<'a> Checker<'a> {
    /// `span`, inside the item being checked, in its file.
    fn in_file(&self, span: Span) -> Span {
        Span::new(span.start + self.base, span.end + self.base)
    }

    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.diags.push(Severity::Error, self.file, self.in_file(span), message.into());
    }

    /// Checks what follows as part of `item`, the `index`th of the policy, in `file`.
    fn enter(&mut self, index: usize, (file, item): (usize, &Item)) {
        (self.file, self.item, self.base) = (file, index, item.span.start);
    }

    fn policy(&mut self, items: &[(usize, &'a Item)]) {
        // Cluster first (node-port-range and service CIDRs constrain services), then
        // nodes (endpoints name them), services, and endpoints last.
        let mut cluster_seen = false;
        for (index, &(file, item)) in items.iter().enumerate() {
            self.enter(index, (file, item));
            if let ItemKind::Cluster(body) = &item.kind {
                // A second block is still checked, so its own errors show too.
                let cluster = self.cluster(body);
                if cluster_seen {
                    self.error(item.keyword, "a policy has at most one `cluster` block");
                } else {
                    cluster_seen = true;
                    self.out.cluster = cluster;
                }
            }
        }
        for (index, &(file, item)) in items.iter().enumerate() {
            self.enter(index, (file, item));
            if let ItemKind::Node { name, body } = &item.kind {
                self.node(name, body);
            }
        }
        for (index, &(file, item)) in items.iter().enumerate() {
            self.enter(index, (file, item));
            if let ItemKind::Service { name, body } = &item.kind {
                self.service(name, body);
            }
        }
        for (index, &(file, item)) in items.iter().enumerate() {
            self.enter(index, (file, item));
            if let ItemKind::Endpoints { name, body } = &item.kind {
                self.endpoints(name, body);
            }
        }
        let services = std::mem::take(&mut self.services);
        warn_unresolved_targets(&services, &self.named_targets, &mut self.diags);
        self.services = services;
    }

    // ---- cluster ----------------------------------------------------------

    fn cluster(&mut self, body: &'a [Stmt<ClusterStmt>]) -> Cluster {
        let mut cluster = Cluster::default();
        let mut once = Once::default();
        let mut node_port_addresses: Option<NodePortAddresses> = None;
        for stmt in body {
            match &stmt.kind {
                ClusterStmt::ClusterCidr(ws) => {
                    cluster.cluster_cidrs.extend(ws.iter().filter_map(|w| self.cidr(w)));
                }
                ClusterStmt::ServiceCidr(ws) => {
                    cluster.service_cidrs.extend(ws.iter().filter_map(|w| self.cidr(w)));
                }
                ClusterStmt::NodePortAddresses(ws) => {
                    for w in ws {
                        self.node_port_addresses(w, ws.len(), &mut node_port_addresses);
                    }
                }
                ClusterStmt::NodePortRange(w) => {
                    if self.once(&mut once, "node-port-range", stmt.keyword) {
                        if let Some(range) = self.port_range(w) {
                            cluster.node_port_range = range;
                        }
                    }
                }
                ClusterStmt::MasqueradeAll(w) => {
                    if self.once(&mut once, "masquerade-all", stmt.keyword) {
                        if let Some(on) = self.switch(w) {
                            cluster.masquerade_all = on;
                        }
                    }
                }
            }
        }
        cluster.node_port_addresses = node_port_addresses.unwrap_or(NodePortAddresses::Primary);
        cluster
    }

    /// `primary` and `all` stand alone; CIDRs append across statements.
    fn node_port_addresses(&mut self, w: &Word, values: usize, current: &mut Option<NodePortAddresses>) {
        let keyword = match w.text.as_str() {
            "primary" => Some(NodePortAddresses::Primary),
            "all" => Some(NodePortAddresses::All),
            _ => None,
        };
        match (keyword, current.as_mut()) {
            (Some(k), None) if values == 1 => *current = Some(k),
            (Some(_), _) => {
                self.error(w.span, format!("`{}` cannot be combined with other node-port-addresses", w.text))
            }
            (None, None) => {
                if let Some(net) = self.cidr(w) {
                    *current = Some(NodePortAddresses::Cidrs(vec![net]));
                }
            }
            (None, Some(NodePortAddresses::Cidrs(nets))) => nets.extend(self.cidr(w)),
            (None, Some(_)) => {
                self.error(w.span, "node-port-addresses is already `primary` or `all`; a CIDR cannot be added")
            }
        }
    }

    fn port_range(&mut self, w: &Word) -> Option<(u16, u16)> {
        let Some((first, last)) = w.text.split_once('-') else {
            self.error(w.span, format!("invalid port range `{}`; expected FIRST-LAST, e.g. 30000-32767", w.text));
            return None;
        };
        let dash = first.len();
        let first = self.port(&sub(w, 0, dash));
        let last = self.port(&sub(w, dash + 1, dash + 1 + last.len()));
        let (first, last) = (first?.get(), last?.get());
        if first > last {
            self.error(w.span, format!("port range `{}` is empty: {first} is above {last}", w.text));
            return None;
        }
        Some((first, last))
    }

    // ---- node -------------------------------------------------------------

    fn node(&mut self, name: &'a Word, body: &'a [Stmt<NodeStmt>]) {
        // An invalid name still has its body checked; the node is then left out.
        let valid = self.name(name, "node name", MAX_NODE_NAME);
        let duplicate = valid.is_some_and(|n| self.node_names.contains(n));
        if duplicate {
            self.error(name.span, format!("node `{}` is already declared", name.text));
        }
        let mut node = Node {
            name: name.text.clone(),
            addresses: Vec::new(),
            local_addresses: Vec::new(),
            pod_cidrs: Vec::new(),
            zone: None,
        };
        let mut once = Once::default();
        for stmt in body {
            match &stmt.kind {
                NodeStmt::Address(ws) => node.addresses.extend(ws.iter().filter_map(|w| self.address(w))),
                NodeStmt::LocalAddress(ws) => {
                    node.local_addresses.extend(ws.iter().filter_map(|w| self.address(w)));
                }
                NodeStmt::PodCidr(ws) => node.pod_cidrs.extend(ws.iter().filter_map(|w| self.cidr(w))),
                NodeStmt::Zone(w) => {
                    if self.once(&mut once, "zone", stmt.keyword) {
                        node.zone = self.name(w, "zone", MAX_NAME).map(str::to_owned);
                    }
                }
            }
        }
        let has_address = body.iter().any(|s| matches!(s.kind, NodeStmt::Address(_)));
        if !has_address {
            self.error(name.span, format!("node `{}` has no `address`; at least one is required", node.name));
        }
        if let (Some(valid), false) = (valid, duplicate) {
            self.node_names.insert(valid.into());
            self.out.nodes.push(node);
        }
    }

    // ---- service ----------------------------------------------------------

    /// `q` if both its parts are valid names.
    fn service_name(&mut self, q: &'a QualifiedName) -> Option<NameRef<'a>> {
        let namespace = self.name(&q.namespace, "namespace", MAX_NAME);
        let name = self.name(&q.name, "service name", MAX_NAME);
        namespace.and(name).map(|_| NameRef::of(q))
    }

    fn service(&mut self, q: &'a QualifiedName, body: &'a [Stmt<ServiceStmt>]) {
        // An invalid name still has its body checked; the service is then left out.
        let valid = self.service_name(q).is_some();
        let name = NameRef::of(q);
        let duplicate = valid && self.service_index.contains_key(&name);
        if duplicate {
            self.error(q.span, format!("service `{name}` is already declared"));
        }
        let mut s = ServiceDraft::default();
        let mut once = Once::default();
        for stmt in body {
            self.service_stmt(stmt, &mut s, &mut once);
        }
        let kind = s.kind.unwrap_or(ServiceType::ClusterIp);
        let external_traffic_policy = s.external.unwrap_or(TrafficPolicy::Cluster);

        let targets: Vec<_> = s
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.target_name.map(|span| (i, Origin { file: self.file, span: self.in_file(span) })))
            .collect();
        let ports = self.service_ports(name, kind, s.ports);
        if let Some((port, span)) = s.health_check {
            if kind != ServiceType::LoadBalancer || external_traffic_policy != TrafficPolicy::Local {
                self.error(
                    span,
                    "`health-check-node-port` needs `type load-balancer` and `external-traffic-policy local`",
                );
            } else {
                self.claim_node_port(name, Protocol::Tcp, port, span, "health-check node port");
            }
        }
        if kind != ServiceType::LoadBalancer {
            for (_, span) in &s.load_balancer_ips {
                self.error(*span, "`load-balancer-ip` needs `type load-balancer`");
            }
        }
        if !s.cluster_ip_given {
            self.error(q.span, format!("service `{name}` has no `cluster-ip`; headless services are not supported"));
        }
        let cluster_ips = self.cluster_ips(name, &s.cluster_ips);
        if !valid || duplicate {
            return;
        }
        self.named_targets.push(targets);
        self.service_items.push(self.item);
        self.service_index.insert(name, self.services.len());
        self.services.push(Service {
            name: name.owned(),
            kind,
            cluster_ips,
            ports,
            external_ips: s.external_ips,
            load_balancer_ips: s.load_balancer_ips.into_iter().map(|(ip, _)| ip).collect(),
            source_ranges: s.source_ranges,
            external_traffic_policy,
            internal_traffic_policy: s.internal.unwrap_or(TrafficPolicy::Cluster),
            health_check_node_port: s.health_check.map(|(p, _)| p),
            session_affinity: s.affinity,
            traffic_distribution: s.distribution,
            endpoints: None,
        });
    }

    fn service_stmt(&mut self, stmt: &'a Stmt<ServiceStmt>, s: &mut ServiceDraft, once: &mut Once) {
        const TYPES: &[(&str, ServiceType)] = &[
            ("cluster-ip", ServiceType::ClusterIp),
            ("node-port", ServiceType::NodePort),
            ("load-balancer", ServiceType::LoadBalancer),
        ];
        const POLICIES: &[(&str, TrafficPolicy)] =
            &[("cluster", TrafficPolicy::Cluster), ("local", TrafficPolicy::Local)];
        const DISTRIBUTIONS: &[(&str, TrafficDistribution)] = &[
            ("prefer-same-zone", TrafficDistribution::PreferSameZone),
            ("prefer-same-node", TrafficDistribution::PreferSameNode),
        ];
        const MODES: &[(&str, LoadBalancerIpMode)] =
            &[("proxy", LoadBalancerIpMode::Proxy), ("vip", LoadBalancerIpMode::Vip)];

        let kw = stmt.keyword;
        match &stmt.kind {
            ServiceStmt::Type(w) => {
                if self.once(once, "type", kw) {
                    s.kind = self.choice(w, "service type", TYPES);
                }
            }
            ServiceStmt::ClusterIp(ws) => {
                s.cluster_ip_given = true;
                s.cluster_ips.extend(ws.iter().filter_map(|w| Some((self.address(w)?, w.span))));
            }
            ServiceStmt::Port(p) => {
                if let Some(port) = self.port_stmt(p) {
                    s.ports.push(port);
                }
            }
            ServiceStmt::ExternalIp(ws) => s.external_ips.extend(ws.iter().filter_map(|w| self.address(w))),
            ServiceStmt::LoadBalancerIp { address, mode } => {
                let mode = match mode {
                    Some(m) => self.choice(m, "load-balancer-ip mode", MODES),
                    None => Some(LoadBalancerIpMode::Vip),
                };
                if let (Some(address), Some(mode)) = (self.address(address), mode) {
                    s.load_balancer_ips.push((LoadBalancerIp { address, mode }, kw));
                }
            }
            ServiceStmt::SourceRanges(ws) => s.source_ranges.extend(ws.iter().filter_map(|w| self.cidr(w))),
            ServiceStmt::ExternalTrafficPolicy(w) => {
                if self.once(once, "external-traffic-policy", kw) {
                    s.external = self.choice(w, "traffic policy", POLICIES);
                }
            }
            ServiceStmt::InternalTrafficPolicy(w) => {
                if self.once(once, "internal-traffic-policy", kw) {
                    s.internal = self.choice(w, "traffic policy", POLICIES);
                }
            }
            ServiceStmt::HealthCheckNodePort(w) => {
                if self.once(once, "health-check-node-port", kw) {
                    s.health_check = self.port(w).map(|p| (p, w.span));
                }
            }
            ServiceStmt::SessionAffinity { mode, timeout } => {
                if self.once(once, "session-affinity", kw) {
                    s.affinity = self.affinity(mode, timeout.as_ref());
                }
            }
            ServiceStmt::TrafficDistribution(w) => {
                if self.once(once, "traffic-distribution", kw) {
                    s.distribution = self.choice(w, "traffic distribution", DISTRIBUTIONS);
                }
            }
        }
    }

    fn affinity(&mut self, mode: &Word, timeout: Option<&Word>) -> Option<Duration> {
        match (mode.text.as_str(), timeout) {
            ("none", None) => None,
            ("none", Some(t)) => {
                self.error(t.span, "a timeout needs `session-affinity client-ip`");
                None
            }
            ("client-ip", None) => Some(DEFAULT_AFFINITY_TIMEOUT),
            ("client-ip", Some(t)) => {
                let d = self.duration(t)?;
                if d.as_secs() == 0 || d.as_secs() > MAX_AFFINITY_TIMEOUT {
                    self.error(
                        t.span,
                        format!("session affinity timeout `{}` is out of range: 1s to 86400s (24h)", t.text),
                    );
                    return None;
                }
                Some(d)
            }
            (other, _) => {
                self.error(mode.span, format!("unknown session affinity `{other}`; expected `none` or `client-ip`"));
                None
            }
        }
    }

    fn port_stmt(&mut self, p: &'a PortStmt) -> Option<PortDraft> {
        // `None` when no name is given; `Some(None)` when the given name is invalid.
        let name = p.name.as_ref().map(|w| self.name(w, "port name", MAX_NAME).map(str::to_owned));
        let port = self.port(&p.port);
        let protocol = self.protocol(&p.protocol);
        let mut target = None;
        let mut target_name = None;
        let mut node_port = None;
        let mut seen_target = false;
        let mut seen_node_port = false;
        for option in &p.options {
            match option {
                PortOption::Target(w) => {
                    if std::mem::replace(&mut seen_target, true) {
                        self.error(w.span, "`target` is given twice");
                    } else if w.text.bytes().all(|b| b.is_ascii_digit()) {
                        target = self.port(w).map(TargetPort::Number);
                    } else {
                        target = self.name(w, "target port name", MAX_NAME).map(|n| TargetPort::Name(n.to_owned()));
                        target_name = Some(w.span);
                    }
                }
                PortOption::NodePort(w) => {
                    if std::mem::replace(&mut seen_node_port, true) {
                        self.error(w.span, "`node-port` is given twice");
                    } else {
                        node_port = self.port(w).map(|p| (p, w.span));
                    }
                }
            }
        }
        let spec = Span::new(p.port.span.start, p.protocol.span.end);
        Some(PortDraft {
            port: ServicePort {
                name: name.map_or(Some(None), |n| n.map(Some))?,
                port: port?,
                protocol: protocol?,
                target,
                node_port: node_port.map(|(p, _)| p),
            },
            spec,
            name_span: p.name.as_ref().map(|w| w.span),
            node_port_span: node_port.map(|(_, s)| s),
            target_name,
        })
    }

    fn service_ports(&mut self, service: NameRef<'a>, kind: ServiceType, drafts: Vec<PortDraft>) -> Vec<ServicePort> {
        let mut names = FxHashSet::default();
        let mut specs = FxHashSet::default();
        for d in &drafts {
            let p = &d.port;
            if let (Some(name), Some(span)) = (&p.name, d.name_span) {
                if !names.insert(name) {
                    self.error(span, format!("port name `{name}` is already used in this service"));
                }
            } else if drafts.len() > 1 {
                self.error(d.spec, "this port needs a name: the service has more than one port");
            }
            if !specs.insert((p.port, p.protocol)) {
                self.error(d.spec, format!("port {}/{} is already declared in this service", p.port, p.protocol));
            }
            if let (Some(node_port), Some(span)) = (p.node_port, d.node_port_span) {
                if kind == ServiceType::ClusterIp {
                    self.error(span, "`node-port` needs `type node-port` or `type load-balancer`");
                } else {
                    self.claim_node_port(service, p.protocol, node_port, span, "node port");
                }
            }
        }
        drafts.into_iter().map(|d| d.port).collect()
    }

    /// Checks a node port against the range and claims it for `service`.
    fn claim_node_port(&mut self, service: NameRef<'a>, protocol: Protocol, port: NonZeroU16, span: Span, what: &str) {
        let (first, last) = self.out.cluster.node_port_range;
        if !(first..=last).contains(&port.get()) && !self.broken.cluster {
            self.error(span, format!("{what} {port} is outside the node-port-range {first}-{last}"));
            return;
        }
        match self.node_ports.get(&(protocol, port.get())).copied() {
            Some(owner) if owner == service => {
                self.error(span, format!("node port {port}/{protocol} is already used in this service"));
            }
            Some(owner) => {
                self.error(span, format!("node port {port}/{protocol} is already used by service `{owner}`"));
            }
            None => {
                self.node_ports.insert((protocol, port.get()), service);
            }
        }
    }

    fn cluster_ips(&mut self, service: NameRef<'a>, ips: &[(IpAddr, Span)]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for &(ip, span) in ips {
            let family = Family::of(ip);
            if out.iter().any(|a| Family::of(*a) == family) {
                self.error(
                    span,
                    format!("a second {} cluster IP; a service has at most one per family", family_name(family)),
                );
                continue;
            }
            let cidrs: Vec<IpNet> =
                self.out.cluster.service_cidrs.iter().filter(|n| Family::of_net(n) == family).copied().collect();
            if !cidrs.is_empty() && !cidrs.iter().any(|n| n.contains(&ip)) {
                let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                self.error(span, format!("cluster IP {ip} is outside the service CIDR {}", list.join(", ")));
            }
            match self.cluster_ips.get(&ip).copied() {
                Some(owner) if owner != service => {
                    self.error(span, format!("cluster IP {ip} is already used by service `{owner}`"));
                }
                _ => {
                    self.cluster_ips.insert(ip, service);
                }
            }
            out.push(ip);
        }
        out
    }

    // ---- endpoints --------------------------------------------------------

    fn endpoints(&mut self, q: &'a QualifiedName, body: &'a [Stmt<EndpointsStmt>]) {
        // A declared service's name is valid: only the others need validating.
        let index = self.service_index.get(&NameRef::of(q)).copied();
        let name = if index.is_some() { Some(NameRef::of(q)) } else { self.service_name(q) };
        match (name, index) {
            (Some(n), None) if !self.broken.services.contains(format!("{n}").as_str()) => {
                self.error(q.span, format!("no service `{n}` is declared for these endpoints"));
            }
            (Some(n), Some(i)) if !self.with_endpoints.insert(i) => {
                self.error(q.span, format!("service `{n}` already has an `endpoints` block"));
            }
            _ => {}
        }
        if let Some(service) = index {
            self.endpoints_items.insert(self.item, service);
        }
        // The ports are lent to the block's check, which reads them while it reports.
        let ports = index.map(|i| std::mem::take(&mut self.services[i].ports));
        let block = self.endpoints_block(body, ports.as_deref());
        if let (Some(service), Some(ports)) = (index.map(|i| &mut self.services[i]), ports) {
            service.ports = ports;
            if service.endpoints.is_none() {
                service.endpoints = Some(block);
            }
        }
    }

    /// The endpoints of one block; `ports` are those of its service, when declared.
    fn endpoints_block(&mut self, body: &'a [Stmt<EndpointsStmt>], ports: Option<&[ServicePort]>) -> Endpoints {
        let mut block = Endpoints { ports: Vec::new(), endpoints: Vec::with_capacity(body.len()) };
        let mut addresses = FxHashSet::with_capacity_and_hasher(body.len(), Default::default());
        for stmt in body {
            match &stmt.kind {
                EndpointsStmt::Port { name, port } => {
                    if let Some(p) = self.endpoint_port(name.as_ref(), port, ports, &block) {
                        block.ports.push(p);
                    }
                }
                EndpointsStmt::Endpoint(e) => {
                    if let Some(endpoint) = self.endpoint(e) {
                        if addresses.insert(endpoint.address) {
                            block.endpoints.push(endpoint);
                        } else {
                            self.error(
                                e.address.span,
                                format!("endpoint {} is already listed in this block", endpoint.address),
                            );
                        }
                    }
                }
            }
        }
        block
    }

    /// `port NAME PORT` must name one of the service's `ports` (when it is
    /// declared); `port PORT` fits only a service whose single port is unnamed
    /// (as EndpointSlice ports match by name).
    fn endpoint_port(
        &mut self,
        name: Option<&'a Word>,
        port: &Word,
        ports: Option<&[ServicePort]>,
        block: &Endpoints,
    ) -> Option<EndpointPort> {
        let number = self.port(port);
        let name = match name {
            Some(w) => {
                let n = self.name(w, "port name", MAX_NAME)?;
                if ports.is_some_and(|ports| !ports.iter().any(|p| p.name.as_deref() == Some(n))) {
                    self.error(w.span, format!("the service has no port named `{n}`"));
                    return None;
                }
                Some(n.to_owned())
            }
            None => {
                if ports.is_some_and(|ports| !matches!(ports, [p] if p.name.is_none())) {
                    self.error(
                        port.span,
                        "`port PORT` without a name fits only a service with one unnamed port; write `port NAME PORT`",
                    );
                    return None;
                }
                None
            }
        };
        if block.ports.iter().any(|p| p.name == name) {
            self.error(port.span, format!("the endpoint port for {} is already given", describe_port(name.as_deref())));
            return None;
        }
        Some(EndpointPort { name, port: number? })
    }

    fn endpoint(&mut self, e: &'a EndpointStmt) -> Option<Endpoint> {
        let address = self.address(&e.address);
        let mut node = None;
        let mut zone = None;
        let mut hint_zones = Vec::new();
        let mut hint_nodes = Vec::new();
        let mut conditions: Vec<&Word> = Vec::new();
        let mut seen = Once::default();
        for option in &e.options {
            match option {
                EndpointOption::Node(w) => {
                    if self.once(&mut seen, "node", w.span) {
                        node = self.endpoint_node(w);
                    }
                }
                EndpointOption::Zone(w) => {
                    if self.once(&mut seen, "zone", w.span) {
                        zone = self.name(w, "zone", MAX_NAME).map(str::to_owned);
                    }
                }
                EndpointOption::HintZones(ws) => {
                    hint_zones.extend(ws.iter().filter_map(|w| Some(self.name(w, "zone", MAX_NAME)?.to_owned())));
                }
                EndpointOption::HintNodes(ws) => {
                    hint_nodes
                        .extend(ws.iter().filter_map(|w| Some(self.name(w, "node name", MAX_NODE_NAME)?.to_owned())));
                }
                EndpointOption::Condition(w) => conditions.push(w),
            }
        }
        let conditions = self.conditions(&conditions)?;
        Some(Endpoint { address: address?, node, zone, conditions, hint_zones, hint_nodes })
    }

    /// The node of an endpoint; a declared node's name is valid already, so only
    /// the others are validated.
    fn endpoint_node(&mut self, w: &'a Word) -> Option<Arc<str>> {
        if let Some(name) = self.node_names.get(w.text.as_str()) {
            return Some(name.clone());
        }
        let name = self.name(w, "node name", MAX_NODE_NAME)?;
        if !self.broken.nodes.contains(name) {
            self.error(w.span, format!("node `{name}` is not declared"));
        }
        Some(name.into())
    }

    /// EndpointSlice conditions: `terminating` implies not ready but serving unless
    /// `not-serving`; anything not ready and not terminating is not serving either.
    fn conditions(&mut self, words: &[&Word]) -> Option<Conditions> {
        const KNOWN: [&str; 4] = ["ready", "not-ready", "terminating", "not-serving"];
        let mut given: Vec<&str> = Vec::new();
        let mut ok = true;
        for w in words {
            let text = w.text.as_str();
            if !KNOWN.contains(&text) {
                self.error(w.span, format!("unknown endpoint condition `{text}`; expected ready, not-ready, terminating or not-serving (or node, zone, hint-zones, hint-nodes)"));
                ok = false;
            } else if given.contains(&text) {
                self.error(w.span, format!("condition `{text}` is given twice"));
                ok = false;
            } else if let Some(other) = given.iter().find(|g| (**g == "ready") != (text == "ready")) {
                // `ready` excludes every other condition.
                self.error(w.span, format!("condition `{text}` contradicts `{other}`"));
                ok = false;
            } else {
                given.push(text);
            }
        }
        if !ok {
            return None;
        }
        let terminating = given.contains(&"terminating");
        let not_ready = given.contains(&"not-ready");
        let not_serving = given.contains(&"not-serving");
        Some(Conditions {
            ready: !terminating && !not_ready && !not_serving,
            serving: !not_serving && (terminating || !not_ready),
            terminating,
        })
    }

    // ---- values -----------------------------------------------------------

    /// Reports a repeated single-valued statement; true the first time.
    fn once(&mut self, seen: &mut Once, keyword: &'static str, span: Span) -> bool {
        if seen.0.contains(&keyword) {
            self.error(span, format!("`{keyword}` is given twice; it takes a single value"));
            return false;
        }
        seen.0.push(keyword);
        true
    }

    /// `w`'s text if it is a valid name.
    fn name(&mut self, w: &'a Word, what: &str, max: usize) -> Option<&'a str> {
        let text = w.text.as_str();
        let chars_ok = text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let ends_ok = text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !chars_ok || !ends_ok {
            self.error(w.span, format!("invalid {what} `{text}`: use lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit"));
            return None;
        }
        if text.len() > max {
            self.error(w.span, format!("{what} is {} characters long; at most {max} are allowed", text.len()));
            return None;
        }
        Some(text)
    }

    fn address(&mut self, w: &Word) -> Option<IpAddr> {
        match w.text.parse() {
            Ok(a) => Some(a),
            Err(_) if w.text.contains('/') => {
                self.error(w.span, format!("expected an address, found the CIDR `{}`", w.text));
                None
            }
            Err(_) => {
                self.error(w.span, format!("invalid IP address `{}`", w.text));
                None
            }
        }
    }

    fn cidr(&mut self, w: &Word) -> Option<IpNet> {
        let Ok(net) = w.text.parse::<IpNet>() else {
            let message = if w.text.contains('/') {
                format!("invalid CIDR `{}`", w.text)
            } else {
                format!("expected a CIDR ADDRESS/PREFIX, found `{}`", w.text)
            };
            self.error(w.span, message);
            return None;
        };
        if net.trunc() != net {
            self.error(w.span, format!("CIDR `{}` has host bits set; did you mean `{}`?", w.text, net.trunc()));
            return None;
        }
        Some(net)
    }

    fn port(&mut self, w: &Word) -> Option<NonZeroU16> {
        if w.text.is_empty() || !w.text.bytes().all(|b| b.is_ascii_digit()) {
            self.error(w.span, format!("invalid port `{}`; expected a number from 1 to 65535", w.text));
            return None;
        }
        let port = w.text.parse::<u16>().ok().and_then(NonZeroU16::new);
        if port.is_none() {
            self.error(w.span, format!("port {} is out of range 1-65535", w.text));
        }
        port
    }

    fn protocol(&mut self, w: &Word) -> Option<Protocol> {
        self.choice(w, "protocol", &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp), ("sctp", Protocol::Sctp)])
    }

    fn switch(&mut self, w: &Word) -> Option<bool> {
        self.choice(w, "switch value", &[("on", true), ("off", false)])
    }

    fn choice<T: Copy>(&mut self, w: &Word, what: &str, choices: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = choices.iter().find(|(k, _)| *k == w.text) {
            return Some(*v);
        }
        let names: Vec<String> = choices.iter().map(|(k, _)| format!("`{k}`")).collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, init)) => format!("{} or {last}", init.join(", ")),
            None => String::new(),
        };
        self.error(w.span, format!("unknown {what} `{}`; expected {expected}", w.text));
        None
    }

    fn duration(&mut self, w: &Word) -> Option<Duration> {
        let text = w.text.as_str();
        let (digits, unit) = match text.char_indices().last() {
            Some((i, 's')) => (&text[..i], 1),
            Some((i, 'm')) => (&text[..i], 60),
            Some((i, 'h')) => (&text[..i], 3600),
            _ => (text, 1),
        };
        let seconds = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit))
        } else {
            None
        };
        match seconds {
            Some(s) => Some(Duration::from_secs(s)),
            None if digits.bytes().all(|b| b.is_ascii_digit()) && !digits.is_empty() => {
                self.error(w.span, format!("duration `{text}` is too long"));
                None
            }
            None => {
                self.error(
                    w.span,
                    format!(
                        "invalid duration `{text}`; expected a number with an optional unit s, m or h (e.g. 10800, 3h)"
                    ),
                );
                None
            }
        }
    }
}

/// A service port whose target is a name needs an endpoints `port` for it.
fn warn_unresolved_targets<S: std::borrow::Borrow<Service>>(
    services: &[S],
    named_targets: &[Vec<(usize, Origin)>],
    diags: &mut Diagnostics,
) {
    for (service, targets) in services.iter().map(S::borrow).zip(named_targets) {
        for (index, origin) in targets {
            let port = &service.ports[*index];
            let resolved = service.endpoints.as_ref().is_some_and(|e| e.ports.iter().any(|p| p.name == port.name));
            if !resolved {
                let Some(TargetPort::Name(target)) = &port.target else {
                    continue;
                };
                diags.push(
                    Severity::Warning,
                    origin.file,
                    origin.span,
                    format!(
                        "target port `{target}` is a name and no endpoints `port` statement of `{}` resolves it; {} gets no endpoints",
                        service.name,
                        describe_port(port.name.as_deref())
                    ),
                );
            }
        }
    }
}

/// A service's name as written in the AST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NameRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl<'a> NameRef<'a> {
    fn of(q: &'a QualifiedName) -> Self {
        NameRef { namespace: &q.namespace.text, name: &q.name.text }
    }

    fn owned(self) -> ServiceName {
        ServiceName { namespace: self.namespace.to_owned(), name: self.name.to_owned() }
    }
}

/// As [`ServiceName`] displays.
impl fmt::Display for NameRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The statement keywords of a block already seen; inline, since every endpoint
/// has one.
#[derive(Default)]
struct Once(SmallVec<[&'static str; 4]>);

/// A service as its statements are read; the rules that relate statements run after.
#[derive(Default)]
struct ServiceDraft {
    kind: Option<ServiceType>,
    /// Whether any `cluster-ip` statement exists, valid or not.
    cluster_ip_given: bool,
    cluster_ips: Vec<(IpAddr, Span)>,
    ports: Vec<PortDraft>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<(LoadBalancerIp, Span)>,
    source_ranges: Vec<IpNet>,
    external: Option<TrafficPolicy>,
    internal: Option<TrafficPolicy>,
    health_check: Option<(NonZeroU16, Span)>,
    affinity: Option<Duration>,
    distribution: Option<TrafficDistribution>,
}

struct PortDraft {
    port: ServicePort,
    /// `PORT/PROTO`.
    spec: Span,
    name_span: Option<Span>,
    node_port_span: Option<Span>,
    /// The target, when it is a name.
    target_name: Option<Span>,
}

/// Part of a word, for errors about one side of `A-B`.
fn sub(w: &Word, start: usize, end: usize) -> Word {
    Word {
        text: w.text.get(start..end).unwrap_or("").to_owned(),
        span: Span::new(w.span.start + start, w.span.start + end),
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

fn describe_port(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("port `{n}`"),
        None => "the unnamed port".to_owned(),
    }
}
