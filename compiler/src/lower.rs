//! Lowering: a node plan becomes one nftables table per family.
//!
//! The shape follows KEP-3866's public contract (DNAT at nat/dstnat on prerouting
//! and output, masquerade at nat/srcnat, drop/reject in filter chains, source
//! ranges before DNAT) and dispatches through a few named verdict maps keyed by
//! `address . protocol . port`. It differs from kube-proxy where the kernel charges
//! quadratically (see docs/ruleset.md): no anonymous sets or maps at all, and no
//! per-endpoint chains — a service chain load-balances with one rule that draws an
//! endpoint from a shared endpoint map (or, with session affinity, with plain
//! `numgen` rules that DNAT directly), and hairpin traffic is recognised once, in
//! postrouting, through one `address . address` set (a few, partitioned by
//! address, on nodes with many endpoint addresses).

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::plan::{
    EndpointSet, ExternalChain, ExternalRoute, FamilyPlan, NodePlan, NodePortScope, PortId, PortPlan, Refusal, Route,
    Target,
};
use crate::policy::Family;
use crate::ruleset::{
    AddrField, BaseHook, Chain, ChainKind, Element, Field, Hook, KeyType, MapData, Match, Rule, Ruleset, Set,
    Statement, Table, Value, Verdict, MASQUERADE_MARK, TABLE_NAME,
};

/// Named chains and sets of every table.
pub mod names {
    pub const SERVICES: &str = "services";
    pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
    pub const MASQUERADING: &str = "masquerading";
    pub const FIREWALL_CHECK: &str = "firewall-check";
    pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
    pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
    pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
    pub const REJECT_CHAIN: &str = "reject-chain";

    pub const CLUSTER_IPS: &str = "cluster-ips";
    pub const CLUSTER_IP_PORTS: &str = "cluster-ip-ports";
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    pub const SERVICE_IPS: &str = "service-ips";
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    pub const FIREWALL_IPS: &str = "firewall-ips";
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// With many endpoint addresses, `hairpin-0`, `hairpin-1`, ... instead.
    pub const HAIRPIN: &str = "hairpin";
    /// Endpoint maps are `endpoints-0`, `endpoints-1`, ...
    pub const ENDPOINTS: &str = "endpoints";
}

use names::*;

/// Lowers a node plan to its ruleset: one `svcnft` table per planned family.
pub fn lower(plan: &NodePlan) -> Ruleset {
    Lowering { families: Vec::new(), remember: false }.lower(plan)
}

/// Lowering that remembers what it lowered: a service port whose plan and place
/// in the endpoint maps did not change keeps its chains, the very same `Arc`s,
/// so that a policy edit re-lowers only what it touched and the diff knows the
/// other chains unchanged without comparing them. The result is always that of
/// [`lower`].
pub struct Lowering {
    families: Vec<Memo>,
    /// Off for a one-off lowering, which keeps nothing for a next one.
    remember: bool,
}

impl Default for Lowering {
    fn default() -> Self {
        Lowering { families: Vec::new(), remember: true }
    }
}

/// What one family's ports were lowered to, under which settings, and what
/// they were assembled into.
struct Memo {
    settings: Settings,
    /// The ports of the last plan, in its order.
    ports: Vec<Lowered>,
    last: Assembly,
}

/// The parts of the last table that the next assembly may reuse.
#[derive(Default)]
struct Assembly {
    /// Shared sets and maps, by name.
    sets: HashMap<String, Arc<Set>>,
    /// How many ports contribute each element of each shared set, by set name;
    /// counted when a set is first patched.
    tallies: HashMap<&'static str, Option<Tally>>,
    /// How many sets the hairpin elements were spread over.
    hairpin_partitions: usize,
    /// Sorted by name, as in the table.
    affinity_sets: Vec<Arc<Set>>,
    service_chains: Vec<Arc<Chain>>,
    /// How many endpoint maps there were.
    endpoint_maps: usize,
}

struct Lowered {
    port: Arc<PortPlan>,
    /// Of the names of its cluster and local chains, which place them.
    hashes: [u64; 2],
    placement: [Option<Placement>; 2],
    fragment: Arc<Fragment>,
}

/// The family-wide inputs of a port's lowering.
#[derive(Clone, PartialEq, Eq)]
struct Settings {
    family: Family,
    cluster_cidrs: Vec<ipnet::IpNet>,
    masquerade_all: bool,
}

impl Settings {
    fn of(plan: &FamilyPlan) -> Self {
        Settings { family: plan.family, cluster_cidrs: plan.cluster_cidrs.clone(), masquerade_all: plan.masquerade_all }
    }
}

impl Lowering {
    pub fn lower(&mut self, plan: &NodePlan) -> Ruleset {
        let mut families = Vec::with_capacity(plan.families.len());
        let tables = plan
            .families
            .iter()
            .map(|family| {
                let settings = Settings::of(family);
                let kept =
                    self.families.iter().position(|m| m.settings == settings).map(|i| self.families.swap_remove(i));
                let mut memo = kept.unwrap_or(Memo { settings, ports: Vec::new(), last: Assembly::default() });
                let table = lower_family(family, &mut memo, self.remember);
                families.push(memo);
                table
            })
            .collect();
        self.families = families;
        Ruleset { tables }
    }
}

/// The chain names of one service port.
struct PortChains {
    cluster: String,
    local: String,
    external: String,
    firewall: String,
}

impl PortChains {
    fn new(id: &PortId) -> Self {
        let name = |kind| {
            let mut out = String::new();
            Self::write_name(&mut out, kind, id);
            out
        };
        PortChains {
            cluster: name(Self::kind(EndpointSet::Cluster)),
            local: name(Self::kind(EndpointSet::Local)),
            external: name("external"),
            firewall: name("firewall"),
        }
    }

    /// `KIND-NAMESPACE/NAME/PROTOCOL/PORT`, appended to `out`.
    fn write_name(out: &mut String, kind: &str, id: &PortId) {
        write!(out, "{kind}-{}/{}/{}/{}", id.service.namespace, id.service.name, id.protocol, id.port)
            .expect("writing to a String cannot fail");
    }

    /// The name prefix of an endpoint set's chain.
    fn kind(set: EndpointSet) -> &'static str {
        match set {
            EndpointSet::Cluster => "cluster",
            EndpointSet::Local => "local",
        }
    }

    fn policy(&self, set: EndpointSet) -> &str {
        match set {
            EndpointSet::Cluster => &self.cluster,
            EndpointSet::Local => &self.local,
        }
    }
}

/// The dynamic set remembering which clients an endpoint serves (session affinity).
fn affinity_set(id: &PortId, target: Target) -> String {
    let address = target.address.to_string().replace(':', ".");
    format!(
        "affinity-{}/{}/{}/{}__{}/{}",
        id.service.namespace, id.service.name, id.protocol, id.port, address, target.port
    )
}

/// Where the endpoints of load-balancing chains live: a few shared maps keyed by
/// the number `numgen` draws, each chain owning a range of keys of one map.
///
/// Replacing an endpoint is then an element change, which the kernel commits
/// without validating the table, as it must for any new `dnat` rule. Several
/// maps rather than one, because the kernel checks every element of a map for
/// each rule that binds it, and every binding for each element added: one map
/// for all chains costs the square of the services. A chain's map and key range
/// come from a hash of its name, so they do not move when other services come
/// and go.
/// Where one chain's endpoints are: a map and its first key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    map: u32,
    offset: u32,
}

/// Keys per slot of an endpoint map; a chain with more endpoints takes several
/// consecutive slots.
const SLOT_KEYS: u32 = 1024;
/// Slots a chain's first slot is hashed into (the search for a free range may go beyond).
const HASHED_SLOTS: u32 = 1024;
const ENDPOINTS_PER_MAP: usize = 512;

/// How many endpoint maps a family has: a power of two, about 512 endpoints each.
fn endpoint_map_count(plan: &FamilyPlan) -> u32 {
    let endpoints: usize = plan
        .ports
        .iter()
        .filter(|p| p.session_affinity.is_none())
        .map(|p| p.endpoints(EndpointSet::Cluster).len() + p.endpoints(EndpointSet::Local).len())
        .sum();
    endpoints.div_ceil(ENDPOINTS_PER_MAP).max(1).next_power_of_two() as u32
}

/// The hashes of the names of a port's cluster and local chains.
fn chain_hashes(id: &PortId) -> [u64; 2] {
    let mut name = String::new();
    [EndpointSet::Cluster, EndpointSet::Local].map(|set| {
        name.clear();
        PortChains::write_name(&mut name, PortChains::kind(set), id);
        xxhash_rust::xxh3::xxh3_64(name.as_bytes())
    })
}

/// Places a port's load-balancing chains (cluster, local) in `count` maps, in
/// slots not `taken` by the ports placed before it.
fn place(port: &PortPlan, hashes: [u64; 2], count: u32, taken: &mut FxHashSet<(u32, u32)>) -> [Option<Placement>; 2] {
    let mut sets = [EndpointSet::Cluster, EndpointSet::Local].into_iter().zip(hashes);
    [(); 2].map(|()| {
        let (set, hash) = sets.next().expect("two sets");
        let endpoints = port.endpoints(set).len();
        (port.session_affinity.is_none() && endpoints > 0).then(|| {
            let map = (hash % u64::from(count)) as u32;
            let slots = (endpoints as u32).div_ceil(SLOT_KEYS);
            let mut first = ((hash >> 32) % u64::from(HASHED_SLOTS)) as u32;
            while (first..first + slots).any(|slot| taken.contains(&(map, slot))) {
                first += 1;
            }
            taken.extend((first..first + slots).map(|slot| (map, slot)));
            Placement { map, offset: first * SLOT_KEYS }
        })
    })
}

fn endpoint_map_name(map: u32) -> String {
    format!("{ENDPOINTS}-{map}")
}

/// What one service port adds to its family's table: elements of the shared
/// sets and maps, its affinity sets and its chains.
#[derive(Default)]
struct Fragment {
    cluster_ips: Vec<Element>,
    cluster_ip_ports: Vec<Element>,
    service_ips: Vec<Element>,
    service_nodeports: Vec<Element>,
    firewall_ips: Vec<Element>,
    no_endpoint_services: Vec<Element>,
    no_endpoint_nodeports: Vec<Element>,
    hairpin: Vec<Element>,
    affinity_sets: Vec<Arc<Set>>,
    /// Elements of the endpoint maps, with the map each belongs to.
    endpoints: Vec<(u32, Element)>,
    chains: Vec<Arc<Chain>>,
}

/// A port's fragment before and after an edit (`None`: the port is not there).
type Change = (Option<Arc<Fragment>>, Option<Arc<Fragment>>);

/// Lowers one service port into its fragment.
struct PortLowering<'a> {
    plan: &'a FamilyPlan,
    /// Of the cluster and the local chain.
    placement: [Option<Placement>; 2],
    out: Fragment,
}

fn addr_proto_port(address: IpAddr, id: &PortId, port: u16, verdict: Verdict) -> Element {
    Element::verdict(&[Value::Addr(address), Value::Proto(id.protocol), Value::Port(port)], verdict)
}

fn proto_port(id: &PortId, port: u16, verdict: Verdict) -> Element {
    Element::verdict(&[Value::Proto(id.protocol), Value::Port(port)], verdict)
}

fn refusal_verdict(refusal: Refusal) -> Verdict {
    match refusal {
        Refusal::Reject => Verdict::Goto(REJECT_CHAIN.into()),
        Refusal::Drop => Verdict::Drop,
    }
}

fn jump(chain: &str) -> Statement {
    Statement::Verdict(Verdict::Jump(chain.into()))
}

fn goto(chain: &str) -> Statement {
    Statement::Verdict(Verdict::Goto(chain.into()))
}

impl PortLowering<'_> {
    fn add_port(&mut self, port: &PortPlan) {
        let id = &port.id;
        let chains = PortChains::new(id);
        let comment = id.to_string();
        self.out.cluster_ips.push(Element::key(&[Value::Addr(port.cluster_ip)]));
        for address in &port.all_endpoint_addresses {
            self.out.hairpin.push(Element::key(&[Value::Addr(*address), Value::Addr(*address)]));
        }

        match port.internal {
            Route::To(set) => {
                let verdict = Verdict::Goto(chains.policy(set).into());
                self.out.service_ips.push(addr_proto_port(port.cluster_ip, id, id.port, verdict));
            }
            Route::Refuse(refusal) => {
                let verdict = refusal_verdict(refusal);
                self.out.no_endpoint_services.push(addr_proto_port(port.cluster_ip, id, id.port, verdict));
            }
        }

        let external_addresses: Vec<IpAddr> =
            port.external_ips.iter().chain(&port.load_balancer_ips).copied().collect();
        match port.external {
            None => {}
            Some(ExternalRoute::Reject) => self.refuse_external(port, &external_addresses, Refusal::Reject),
            Some(ExternalRoute::Chain(external)) => {
                for address in &external_addresses {
                    let verdict = Verdict::Goto(chains.external.clone());
                    self.out.service_ips.push(addr_proto_port(*address, id, id.port, verdict));
                }
                if let Some(node_port) = port.node_port {
                    let verdict = Verdict::Goto(chains.external.clone());
                    self.out.service_nodeports.push(proto_port(id, node_port.get(), verdict));
                }
                if let Some(refusal) = external.refuse {
                    self.refuse_external(port, &external_addresses, refusal);
                }
                self.external_chain(&chains, external, &comment);
            }
        }

        if !port.source_ranges.is_empty() && !port.load_balancer_ips.is_empty() {
            for address in &port.load_balancer_ips {
                let verdict = Verdict::Goto(chains.firewall.clone());
                self.out.firewall_ips.push(addr_proto_port(*address, id, id.port, verdict));
            }
            self.firewall_chain(port, &chains, &comment);
        }

        for set in [EndpointSet::Cluster, EndpointSet::Local] {
            if !port.endpoints(set).is_empty() {
                self.policy_chain(port, set, chains.policy(set), &comment);
            }
        }
    }

    fn refuse_external(&mut self, port: &PortPlan, addresses: &[IpAddr], refusal: Refusal) {
        let id = &port.id;
        for address in addresses {
            self.out.no_endpoint_services.push(addr_proto_port(*address, id, id.port, refusal_verdict(refusal)));
        }
        if let Some(node_port) = port.node_port {
            self.out.no_endpoint_nodeports.push(proto_port(id, node_port.get(), refusal_verdict(refusal)));
        }
    }

    /// Load balancing over the set; the cluster IP's port goes in
    /// `cluster-ip-ports` when this is the chain its traffic reaches (see
    /// [`cluster_ip_masquerade`]).
    fn policy_chain(&mut self, port: &PortPlan, set: EndpointSet, name: &str, comment: &str) {
        let id = &port.id;
        let mut rules = Vec::new();
        if port.internal == Route::To(set) && masquerades_cluster_ips(self.plan) {
            self.out.cluster_ip_ports.push(Element::key(&[
                Value::Addr(port.cluster_ip),
                Value::Proto(id.protocol),
                Value::Port(id.port),
            ]));
        }

        let targets = port.endpoints(set);
        let proto = Match::Cmp { field: Field::L4Proto, negate: false, value: Value::Proto(id.protocol) };
        match port.session_affinity {
            None => {
                let slot = match set {
                    EndpointSet::Cluster => 0,
                    EndpointSet::Local => 1,
                };
                let Placement { map, offset } = self.placement[slot].expect("every balancing chain is placed");
                let elements =
                    targets.iter().zip(offset..).map(|(t, key)| (map, Element::endpoint(key, t.address, t.port.get())));
                self.out.endpoints.extend(elements);
                let dnat = Statement::DnatMap { modulus: targets.len() as u32, offset, map: endpoint_map_name(map) };
                rules.push(Rule::new(vec![proto], vec![dnat]).with_comment(comment));
            }
            Some(timeout) => rules.extend(self.affinity_rules(id, targets, timeout, proto, comment)),
        }
        self.out.chains.push(Arc::new(Chain { name: name.into(), hook: None, rules }));
    }

    /// Session affinity: each endpoint remembers its clients in a dynamic set, and
    /// a client found in one goes straight back, as with kube-proxy, whose
    /// endpoint chain `update`s the set on every connection. Choosing an endpoint must record
    /// it in that endpoint's set, so each endpoint has its own rule: a cascade of
    /// independent draws, where endpoint i is taken with probability 1/(n-i) when
    /// none before it was, which makes every endpoint 1/n.
    fn affinity_rules(
        &mut self,
        id: &PortId,
        targets: &[Target],
        timeout: std::time::Duration,
        proto: Match,
        comment: &str,
    ) -> Vec<Rule> {
        let sets: Vec<String> = targets
            .iter()
            .map(|t| {
                let name = affinity_set(id, *t);
                self.out.affinity_sets.push(Arc::new(Set {
                    name: name.clone(),
                    key: vec![KeyType::addr(self.plan.family)],
                    data: None,
                    dynamic_timeout: Some(timeout),
                    comment: None,
                    elements: Vec::new(),
                }));
                name
            })
            .collect();
        // Every connection to the endpoint, returning or new, refreshes the
        // client's entry, so the timeout counts from its last connection.
        let update_dnat = |t: &Target, set: &String| {
            vec![
                Statement::Update { set: set.clone(), key: vec![Field::Saddr] },
                Statement::Dnat { address: t.address, port: t.port.get() },
            ]
        };
        let mut rules = Vec::new();
        for (target, set) in targets.iter().zip(&sets) {
            let matches =
                vec![Match::InSet { key: vec![Field::Saddr], set: set.clone(), negate: false }, proto.clone()];
            rules.push(Rule::new(matches, update_dnat(target, set)).with_comment(comment));
        }
        let n = targets.len();
        for (i, (target, set)) in targets.iter().zip(&sets).enumerate() {
            let mut matches = Vec::new();
            if i + 1 < n {
                matches.push(Match::Numgen { modulus: (n - i) as u32, value: 0 });
            }
            matches.push(proto.clone());
            rules.push(Rule::new(matches, update_dnat(target, set)).with_comment(comment));
        }
        rules
    }

    fn external_chain(&mut self, chains: &PortChains, external: ExternalChain, comment: &str) {
        let mut rules = Vec::new();
        if external.masquerade {
            rules.push(Rule::new(vec![], vec![jump(MARK_FOR_MASQUERADE)]).with_comment(comment));
        }
        if external.short_circuit {
            for cidr in &self.plan.cluster_cidrs {
                let pod = Match::Cmp { field: Field::Saddr, negate: false, value: Value::Net(*cidr) };
                rules.push(Rule::new(vec![pod], vec![goto(&chains.cluster)]).with_comment(comment));
            }
            let node = Match::FibLocal(AddrField::Saddr);
            rules.push(Rule::new(vec![node.clone()], vec![jump(MARK_FOR_MASQUERADE)]).with_comment(comment));
            rules.push(Rule::new(vec![node], vec![goto(&chains.cluster)]).with_comment(comment));
        }
        if let Some(target) = external.target {
            rules.push(Rule::new(vec![], vec![goto(chains.policy(target))]).with_comment(comment));
        }
        self.out.chains.push(Arc::new(Chain { name: chains.external.clone(), hook: None, rules }));
    }

    /// Reached (by goto from `firewall-check`) for load-balancer IPs with source
    /// ranges: allowed sources return, everything else is dropped before DNAT.
    fn firewall_chain(&mut self, port: &PortPlan, chains: &PortChains, comment: &str) {
        let allowed = port.source_ranges.iter().map(|r| Value::Net(*r));
        let from_node = port.load_balancer_ips.iter().filter(|_| port.allow_from_lb_ips).map(|a| Value::Addr(*a));
        let mut rules: Vec<Rule> = allowed
            .chain(from_node)
            .map(|value| {
                let source = Match::Cmp { field: Field::Saddr, negate: false, value };
                Rule::new(vec![source], vec![Statement::Verdict(Verdict::Return)]).with_comment(comment)
            })
            .collect();
        rules.push(Rule::new(vec![], vec![Statement::Verdict(Verdict::Drop)]).with_comment(comment));
        self.out.chains.push(Arc::new(Chain { name: chains.firewall.clone(), hook: None, rules }));
    }
}

/// Lowers a family's ports, reusing the fragment of every port whose plan and
/// placement are those it was lowered with, and assembles the table; `memo` is
/// updated to this plan.
fn lower_family(plan: &FamilyPlan, memo: &mut Memo, remember: bool) -> Table {
    let count = endpoint_map_count(plan);
    let mut taken = FxHashSet::with_capacity_and_hasher(memo.ports.len() * 2, Default::default());
    // Ports usually keep their place in the plan; those that moved are found by id.
    let mut previous: Vec<Option<Lowered>> = std::mem::take(&mut memo.ports).into_iter().map(Some).collect();
    let mut by_id: Option<FxHashMap<PortId, usize>> = None;
    // Fragments lowered anew, and the ones they replace: only the sets these
    // contribute to can differ from the last assembly.
    let mut changes: Vec<Change> = Vec::new();
    let mut lowered = Vec::with_capacity(plan.ports.len());
    for (at, port) in plan.ports.iter().enumerate() {
        let same_port =
            |kept: &Option<Lowered>| kept.as_ref().is_some_and(|k| Arc::ptr_eq(&k.port, port) || k.port.id == port.id);
        let kept = if previous.get(at).is_some_and(same_port) {
            previous[at].take()
        } else {
            let index = by_id.get_or_insert_with(|| {
                previous.iter().enumerate().filter_map(|(i, k)| Some((k.as_ref()?.port.id.clone(), i))).collect()
            });
            index.get(&port.id).and_then(|&i| previous[i].take())
        };
        let hashes = kept.as_ref().map_or_else(|| chain_hashes(&port.id), |k| k.hashes);
        let placement = place(port, hashes, count, &mut taken);
        let lowering = match kept {
            Some(k) if k.placement == placement && (Arc::ptr_eq(&k.port, port) || k.port == *port) => {
                Lowered { port: port.clone(), ..k }
            }
            kept => {
                let mut lowering = PortLowering { plan, placement, out: Fragment::default() };
                lowering.add_port(port);
                let fragment = Arc::new(lowering.out);
                changes.push((kept.map(|k| k.fragment), Some(fragment.clone())));
                Lowered { port: port.clone(), hashes, placement, fragment }
            }
        };
        lowered.push(lowering);
    }
    changes.extend(previous.into_iter().flatten().map(|gone| (Some(gone.fragment), None)));
    let table = assemble(plan, &lowered, &changes, &mut memo.last, remember);
    if remember {
        memo.ports = lowered;
    }
    table
}

/// The table of `fragments`, reusing the `last` assembly (and updating it): a
/// shared set none of the `changes` contributes to differently is the same
/// allocation; one they do is patched when they are few, and so are the sorted
/// lists of chains and affinity sets when the changes keep every name. When the
/// assembly is `remember`ed, what the next one patches is counted now.
fn assemble(
    plan: &FamilyPlan,
    fragments: &[Lowered],
    changes: &[Change],
    last: &mut Assembly,
    remember: bool,
) -> Table {
    let (previous, tallies) = (&last.sets, &mut last.tallies);
    let family = plan.family;
    let addr = KeyType::addr(family);
    let target_key = vec![addr, KeyType::InetProto, KeyType::InetService];
    let port_key = vec![KeyType::InetProto, KeyType::InetService];
    let mut set = |name: &'static str,
                   key: Vec<KeyType>,
                   verdict_map: bool,
                   comment: &str,
                   part: fn(&Fragment) -> &[Element]| {
        let tally = tallies.entry(name).or_default();
        let elements = match previous.get(name) {
            Some(kept) if changes.iter().all(|(old, new)| part_of(old, part) == part_of(new, part)) => {
                return kept.clone();
            }
            Some(kept) if changes.len() <= PATCHED_CHANGES => patched(&kept.elements, tally, fragments, changes, part),
            _ => {
                *tally = None;
                gathered(fragments, part)
            }
        };
        let data = verdict_map.then_some(MapData::Verdict);
        Arc::new(Set { name: name.into(), key, data, dynamic_timeout: None, comment: Some(comment.into()), elements })
    };
    let mut sets = vec![
        set(CLUSTER_IPS, vec![addr], false, "every cluster IP", |f| &f.cluster_ips),
        set(SERVICE_IPS, target_key.clone(), true, "cluster, external and load-balancer IPs with endpoints", |f| {
            &f.service_ips
        }),
        set(SERVICE_NODEPORTS, port_key.clone(), true, "node ports with endpoints", |f| &f.service_nodeports),
        set(FIREWALL_IPS, target_key.clone(), true, "load-balancer IPs with source ranges", |f| &f.firewall_ips),
        set(NO_ENDPOINT_SERVICES, target_key.clone(), true, "service IPs without usable endpoints", |f| {
            &f.no_endpoint_services
        }),
        set(NO_ENDPOINT_NODEPORTS, port_key, true, "node ports without usable endpoints", |f| &f.no_endpoint_nodeports),
    ];
    if masquerades_cluster_ips(plan) {
        let comment = "cluster IP ports with endpoints, for the masquerade rule";
        sets.push(set(CLUSTER_IP_PORTS, target_key.clone(), false, comment, |f| &f.cluster_ip_ports));
    }
    let hairpin_tally = tallies.entry(HAIRPIN).or_default();
    let (hairpin, partitions) = hairpin_sets(
        vec![addr, addr],
        fragments,
        changes,
        previous,
        (hairpin_tally, last.hairpin_partitions, remember),
    );
    sets.extend(hairpin);
    if let NodePortScope::Addresses(addresses) = &plan.node_ports_on {
        let elements = addresses.iter().map(|a| Element::key(&[Value::Addr(*a)])).collect();
        let declared = Set {
            name: NODEPORT_IPS.into(),
            key: vec![addr],
            data: None,
            dynamic_timeout: None,
            comment: Some("addresses accepting node ports".into()),
            elements,
        };
        let kept = previous.get(NODEPORT_IPS).filter(|kept| ***kept == declared);
        sets.insert(1, kept.cloned().unwrap_or_else(|| Arc::new(declared)));
    }
    // Endpoint maps before the affinity sets: the kernel finds a set by name by
    // walking the table's sets in the order they were added, for every rule
    // that names one, and every balancing rule names an endpoint map.
    sets.extend(endpoint_maps(plan, fragments, changes, previous, last.endpoint_maps));
    last.endpoint_maps = endpoint_map_count(plan) as usize;
    last.sets = sets.iter().map(|s| (s.name.clone(), s.clone())).collect();
    last.hairpin_partitions = partitions;
    // The cluster and local chains of one port share an endpoint's set, so a
    // client keeps its endpoint whichever chain it comes through: deduplicated.
    last.affinity_sets =
        by_name(std::mem::take(&mut last.affinity_sets), fragments, changes, |f| &f.affinity_sets, |s| &s.name);
    sets.extend(last.affinity_sets.iter().cloned());

    last.service_chains =
        by_name(std::mem::take(&mut last.service_chains), fragments, changes, |f| &f.chains, |c| &c.name);
    let mut chains: Vec<Arc<Chain>> = base_chains(plan, partitions).into_iter().map(Arc::new).collect();
    chains.extend(last.service_chains.iter().cloned());
    Table { family, name: TABLE_NAME.into(), sets, chains }
}

/// The items of all fragments, sorted by name, one per name. When every change
/// replaces a port's items by items of the same names, `last` (that list for
/// the last assembly) only needs the new items swapped in.
fn by_name<T>(
    mut last: Vec<Arc<T>>,
    fragments: &[Lowered],
    changes: &[Change],
    items: fn(&Fragment) -> &[Arc<T>],
    name: fn(&T) -> &str,
) -> Vec<Arc<T>> {
    let renames = |(old, new): &Change| match (old, new) {
        (Some(old), Some(new)) => !items(old).iter().map(|i| name(i)).eq(items(new).iter().map(|i| name(i))),
        _ => true,
    };
    if last.is_empty() || changes.iter().any(renames) {
        let mut all: Vec<Arc<T>> = fragments.iter().flat_map(|l| items(&l.fragment).iter().cloned()).collect();
        all.sort_by(|a, b| name(a).cmp(name(b)));
        all.dedup_by(|a, b| name(a) == name(b));
        return all;
    }
    for item in changes.iter().filter_map(|(_, new)| new.as_deref()).flat_map(items) {
        if let Ok(at) = last.binary_search_by(|kept| name(kept).cmp(name(item))) {
            last[at] = item.clone();
        }
    }
    last
}

/// Up to this many endpoint addresses of a family, one `hairpin` set holds them
/// all; beyond, about this many per set. The kernel dumps a set's elements by
/// walking them again from the first for every 32 KiB reply, so reading one set
/// back grows with the square of its size: 100k addresses in one set took
/// 100–160 ms to read, in 16 sets a few.
pub const HAIRPIN_SET_ADDRESSES: usize = 8192;

/// How many sets hold the hairpin elements: 1 up to [`HAIRPIN_SET_ADDRESSES`]
/// addresses, else a power of two, about that many addresses each.
fn hairpin_partitions(addresses: usize) -> usize {
    if addresses <= HAIRPIN_SET_ADDRESSES {
        1
    } else {
        addresses.div_ceil(HAIRPIN_SET_ADDRESSES).next_power_of_two()
    }
}

/// The set of `partitions` a hairpin element `A . A` belongs to: the low bits
/// of A, so an address stays in its set until the number of sets changes.
fn hairpin_partition(element: &Element, partitions: usize) -> usize {
    let low = match element.key.first() {
        Some(Value::Addr(IpAddr::V4(a))) => u32::from(*a) as usize,
        Some(Value::Addr(IpAddr::V6(a))) => u128::from(*a) as usize,
        _ => 0,
    };
    low & (partitions - 1)
}

/// The name of one of `partitions` hairpin sets.
fn hairpin_set_name(partition: usize, partitions: usize) -> String {
    if partitions == 1 {
        HAIRPIN.into()
    } else {
        format!("{HAIRPIN}-{partition}")
    }
}

/// The table's hairpin sets, `hairpin` or `hairpin-0`, `hairpin-1`, ..., and how
/// many: those none of the `changes` adds to or takes from are the `previous`
/// ones, and those they do are patched, as long as the number of sets stays
/// (with the contributions counted for that when the assembly is remembered).
fn hairpin_sets(
    key: Vec<KeyType>,
    fragments: &[Lowered],
    changes: &[Change],
    previous: &HashMap<String, Arc<Set>>,
    (tally, previous_partitions, remember): (&mut Option<Tally>, usize, bool),
) -> (Vec<Arc<Set>>, usize) {
    let part: fn(&Fragment) -> &[Element] = |f| &f.hairpin;
    let declare = |partition: usize, partitions: usize, elements: Vec<Element>| {
        Arc::new(Set {
            name: hairpin_set_name(partition, partitions),
            key: key.clone(),
            data: None,
            dynamic_timeout: None,
            comment: Some("endpoint . endpoint: a pod reaching itself".into()),
            elements,
        })
    };
    let split = |elements: Vec<Element>| {
        let partitions = hairpin_partitions(elements.len());
        let mut lists = vec![Vec::new(); partitions];
        for element in elements {
            lists[hairpin_partition(&element, partitions)].push(element);
        }
        let sets = lists.into_iter().enumerate().map(|(at, elements)| declare(at, partitions, elements)).collect();
        (sets, partitions)
    };
    let kept = |partition, partitions| previous.get(&hairpin_set_name(partition, partitions)).cloned();
    let unchanged = changes.iter().all(|(old, new)| part_of(old, part) == part_of(new, part));
    if previous_partitions > 0 && unchanged {
        if let Some(sets) = (0..previous_partitions).map(|at| kept(at, previous_partitions)).collect() {
            return (sets, previous_partitions);
        }
    }
    if previous_partitions == 0 || changes.len() > PATCHED_CHANGES {
        // Every endpoint move patches these sets: counting their 100k contributions
        // at 10k services belongs to the cold lowering, not to the first edit.
        *tally = None;
        if remember {
            tallied(tally, fragments, &[], part);
        }
        return split(gathered(fragments, part));
    }
    let tally = tallied(tally, fragments, changes, part);
    let partitions = hairpin_partitions(tally.len());
    if partitions != previous_partitions {
        let mut elements: Vec<Element> = tally.keys().cloned().collect();
        elements.sort_unstable();
        return split(elements);
    }
    let mut touched = vec![false; partitions];
    for element in changes.iter().flat_map(|(old, new)| part_of(old, part).iter().chain(part_of(new, part))) {
        touched[hairpin_partition(element, partitions)] = true;
    }
    let mut lists: Vec<Vec<Element>> = (0..partitions)
        .map(|at| match kept(at, partitions) {
            Some(set) if touched[at] => set.elements.clone(),
            _ => Vec::new(),
        })
        .collect();
    patch(&mut lists, |element| hairpin_partition(element, partitions), tally, changes, part);
    let sets = lists
        .into_iter()
        .enumerate()
        .map(|(at, elements)| match kept(at, partitions) {
            Some(set) if !touched[at] => set,
            _ => declare(at, partitions, elements),
        })
        .collect();
    (sets, partitions)
}

/// Up to this many changed ports, a shared set is patched rather than rebuilt.
const PATCHED_CHANGES: usize = 32;

/// How many ports contribute each element of a shared set.
type Tally = FxHashMap<Element, u32>;

/// A shared set's elements from every fragment, sorted and deduplicated.
fn gathered(fragments: &[Lowered], part: fn(&Fragment) -> &[Element]) -> Vec<Element> {
    let mut elements: Vec<Element> = fragments.iter().flat_map(|l| part(&l.fragment)).cloned().collect();
    elements.sort_unstable();
    elements.dedup();
    elements
}

/// `kept`, the elements of the last assembly, with the contributions of the
/// `changes` taken out and put in: an element goes when no port contributes it
/// any more, and comes when the first one does.
fn patched(
    kept: &[Element],
    tally: &mut Option<Tally>,
    fragments: &[Lowered],
    changes: &[Change],
    part: fn(&Fragment) -> &[Element],
) -> Vec<Element> {
    let tally = tallied(tally, fragments, changes, part);
    let mut elements = [kept.to_vec()];
    patch(&mut elements, |_| 0, tally, changes, part);
    let [elements] = elements;
    elements
}

/// How many ports contribute each element of one part of the table once the
/// `changes` are made: counted from the current `fragments` the first time,
/// then kept up to date with the changes. Elements no port contributes are not
/// in it.
fn tallied<'t>(
    tally: &'t mut Option<Tally>,
    fragments: &[Lowered],
    changes: &[Change],
    part: fn(&Fragment) -> &[Element],
) -> &'t mut Tally {
    match tally {
        Some(tally) => {
            for (old, new) in changes {
                for element in part_of(old, part) {
                    if let Some(count) = tally.get_mut(element) {
                        *count -= 1;
                        if *count == 0 {
                            tally.remove(element);
                        }
                    }
                }
                for element in part_of(new, part) {
                    *tally.entry(element.clone()).or_default() += 1;
                }
            }
            tally
        }
        None => {
            let mut counted = Tally::default();
            for element in fragments.iter().flat_map(|l| part(&l.fragment)) {
                *counted.entry(element.clone()).or_default() += 1;
            }
            tally.insert(counted)
        }
    }
}

/// Takes the elements the `changes` touch out of, or puts them into, their
/// sorted list among `lists` (the one `list_of` them), as `tally` has them.
fn patch(
    lists: &mut [Vec<Element>],
    list_of: impl Fn(&Element) -> usize,
    tally: &Tally,
    changes: &[Change],
    part: fn(&Fragment) -> &[Element],
) {
    let touched = changes.iter().flat_map(|(old, new)| part_of(old, part).iter().chain(part_of(new, part)));
    for element in touched {
        let elements = &mut lists[list_of(element)];
        match (elements.binary_search(element), tally.contains_key(element)) {
            (Ok(at), false) => {
                elements.remove(at);
            }
            (Err(at), true) => elements.insert(at, element.clone()),
            _ => {}
        }
    }
}

/// What a fragment, if any, contributes to one part of the table.
fn part_of<T>(fragment: &Option<Arc<Fragment>>, part: fn(&Fragment) -> &[T]) -> &[T] {
    fragment.as_deref().map_or(&[], part)
}

/// The non-empty endpoint maps; those none of the `changes` touches are taken
/// from `previous`, of which there were `previous_count`.
fn endpoint_maps(
    plan: &FamilyPlan,
    fragments: &[Lowered],
    changes: &[Change],
    previous: &HashMap<String, Arc<Set>>,
    previous_count: usize,
) -> Vec<Arc<Set>> {
    let count = endpoint_map_count(plan) as usize;
    let endpoints_of = |f| part_of(f, |f| &f.endpoints);
    let mut touched = vec![false; count];
    for (old, new) in changes {
        if endpoints_of(old) != endpoints_of(new) {
            for (map, _) in endpoints_of(old).iter().chain(endpoints_of(new)) {
                // A fragment from before the map count shrank may name a map
                // that is gone.
                if let Some(t) = touched.get_mut(*map as usize) {
                    *t = true;
                }
            }
        }
    }
    let mut rebuilt: Vec<Vec<Element>> = vec![Vec::new(); count];
    if previous_count == count {
        // A touched map is patched: every key is one chain's, so taking out the
        // changed ports' old elements, then putting in their new ones, leaves
        // every other chain's elements as they were.
        for (map, elements) in rebuilt.iter_mut().enumerate().filter(|(map, _)| touched[*map]) {
            if let Some(kept) = previous.get(&endpoint_map_name(map as u32)) {
                elements.clone_from(&kept.elements);
            }
        }
        for (map, element) in changes.iter().flat_map(|(old, _)| endpoints_of(old)) {
            let elements = &mut rebuilt[*map as usize];
            if let Ok(at) = elements.binary_search(element) {
                elements.remove(at);
            }
        }
        for (map, element) in changes.iter().flat_map(|(_, new)| endpoints_of(new)) {
            let elements = &mut rebuilt[*map as usize];
            if let Err(at) = elements.binary_search(element) {
                elements.insert(at, element.clone());
            }
        }
    } else {
        // When the map count changes, so do all placements: every map is touched.
        for (map, element) in fragments.iter().flat_map(|l| &l.fragment.endpoints) {
            rebuilt[*map as usize].push(element.clone());
        }
        rebuilt.iter_mut().for_each(|elements| elements.sort_unstable());
    }
    rebuilt
        .into_iter()
        .enumerate()
        .filter_map(|(map, elements)| {
            let name = endpoint_map_name(map as u32);
            if !touched[map] {
                return previous.get(&name).cloned();
            }
            if elements.is_empty() {
                return None;
            }
            Some(Arc::new(Set {
                name,
                key: vec![KeyType::Numgen],
                data: Some(MapData::Endpoint),
                dynamic_timeout: None,
                comment: None,
                elements,
            }))
        })
        .collect()
}

/// Whether traffic to cluster IPs is masqueraded at all: with `masquerade-all`,
/// or from outside a cluster CIDR when there is one.
fn masquerades_cluster_ips(plan: &FamilyPlan) -> bool {
    plan.masquerade_all || !plan.cluster_cidrs.is_empty()
}

/// The rule of the `services` chain that marks traffic to a cluster IP for
/// masquerade, `ip saddr != CIDR ip daddr . meta l4proto . th dport
/// @cluster-ip-ports jump mark-for-masquerade` (no source test with
/// `masquerade-all`), if the family masquerades such traffic.
///
/// It stands for the rule kube-proxy puts first in each service port's chain,
/// `ip daddr VIP meta l4proto P th dport PORT ip saddr != CIDR jump
/// mark-for-masquerade`, and marks exactly the same packets: that rule was the
/// first of the chain the port's `service-ips` element sends traffic to, and
/// only that traffic matches it (the chain is also reached from the external
/// chain, but then addressed to another address or port). `cluster-ip-ports`
/// holds the keys of those elements, the ports whose internal route reaches
/// endpoints, so the packets it marks are those the per-chain rule marked, one
/// rule earlier in the same `services` chain, with nothing in between that
/// reads the mark. The plain `cluster-ips` set would not do: an address may be
/// one service's cluster IP and another's external or load-balancer IP, whose
/// clients `external-traffic-policy local` must not masquerade.
fn cluster_ip_masquerade(plan: &FamilyPlan) -> Option<Rule> {
    if !masquerades_cluster_ips(plan) {
        return None;
    }
    let mut matches: Vec<Match> = Vec::new();
    if !plan.masquerade_all {
        matches.extend(plan.cluster_cidrs.iter().map(|cidr| Match::Cmp {
            field: Field::Saddr,
            negate: true,
            value: Value::Net(*cidr),
        }));
    }
    matches.push(Match::InSet {
        key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
        set: CLUSTER_IP_PORTS.into(),
        negate: false,
    });
    let comment = if plan.masquerade_all {
        "masquerade-all: masquerade traffic to cluster IPs"
    } else {
        "masquerade traffic to cluster IPs from outside the cluster"
    };
    Some(Rule::new(matches, vec![jump(MARK_FOR_MASQUERADE)]).with_comment(comment))
}

/// The hooks, dispatch and helper chains every table has.
fn base_chains(plan: &FamilyPlan, hairpin_partitions: usize) -> Vec<Chain> {
    let base = |name: &str, kind, hook, priority, rules| Chain {
        name: name.into(),
        hook: Some(BaseHook { kind, hook, priority }),
        rules,
    };
    let plain = |name: &str, rules| Chain { name: name.into(), hook: None, rules };
    let new_then_jump = |chain: &str| Rule::new(vec![Match::CtStateNew], vec![jump(chain)]);
    let target_key = vec![Field::Daddr, Field::L4Proto, Field::Dport];
    let port_key = vec![Field::L4Proto, Field::Dport];
    let vmap = |key: &Vec<Field>, map: &str| Statement::Vmap { key: key.clone(), map: map.into() };
    let node_port_matches = match &plan.node_ports_on {
        NodePortScope::AllLocal => {
            let loopback = match plan.family {
                Family::Ipv4 => "127.0.0.0/8",
                Family::Ipv6 => "::1/128",
            };
            let loopback = Value::Net(loopback.parse().expect("a valid constant prefix"));
            vec![Match::FibLocal(AddrField::Daddr), Match::Cmp { field: Field::Daddr, negate: true, value: loopback }]
        }
        NodePortScope::Addresses(_) => {
            vec![Match::InSet { key: vec![Field::Daddr], set: NODEPORT_IPS.into(), negate: false }]
        }
    };
    let mut cluster_ips_check = vec![Rule::new(
        vec![Match::InSet { key: vec![Field::Daddr], set: CLUSTER_IPS.into(), negate: false }],
        vec![Statement::Reject],
    )
    .with_comment("reject traffic to unknown ports of cluster IPs")];
    cluster_ips_check.extend(plan.service_cidrs.iter().map(|cidr| {
        Rule::new(
            vec![Match::Cmp { field: Field::Daddr, negate: false, value: Value::Net(*cidr) }],
            vec![Statement::Verdict(Verdict::Drop)],
        )
        .with_comment("drop traffic to unallocated cluster IPs")
    }));
    let mask = MASQUERADE_MARK;
    // One rule per hairpin set: only a connection's first packet meets them.
    let mut masquerading: Vec<Rule> = (0..hairpin_partitions)
        .map(|partition| {
            let set = hairpin_set_name(partition, hairpin_partitions);
            Rule::new(
                vec![Match::CtStatusDnat, Match::InSet { key: vec![Field::Saddr, Field::Daddr], set, negate: false }],
                vec![Statement::MarkOr(mask)],
            )
            .with_comment("hairpin: a pod reaching itself through a service")
        })
        .collect();
    masquerading.extend([
        Rule::new(vec![Match::MarkClear(mask)], vec![Statement::Verdict(Verdict::Return)]),
        Rule::new(vec![], vec![Statement::MarkXor(mask), Statement::Masquerade]),
    ]);
    // Source ranges before DNAT (dstnat - 10); drops and rejects at filter
    // priority, after DNAT, as kube-proxy's layout has them since 1.33: the
    // node's own traffic that an eTP-local chain short-circuits to remote
    // endpoints must not meet the "no local endpoint" drop of its external IP.
    vec![
        base(
            "filter-prerouting-pre-dnat",
            ChainKind::Filter,
            Hook::Prerouting,
            -110,
            vec![new_then_jump(FIREWALL_CHECK)],
        ),
        base("filter-output-pre-dnat", ChainKind::Filter, Hook::Output, -110, vec![new_then_jump(FIREWALL_CHECK)]),
        base(
            "filter-input",
            ChainKind::Filter,
            Hook::Input,
            0,
            vec![new_then_jump(NODEPORT_ENDPOINTS_CHECK), new_then_jump(SERVICE_ENDPOINTS_CHECK)],
        ),
        base(
            "filter-forward",
            ChainKind::Filter,
            Hook::Forward,
            0,
            vec![new_then_jump(SERVICE_ENDPOINTS_CHECK), new_then_jump(CLUSTER_IPS_CHECK)],
        ),
        base(
            "filter-output",
            ChainKind::Filter,
            Hook::Output,
            0,
            vec![new_then_jump(SERVICE_ENDPOINTS_CHECK), new_then_jump(CLUSTER_IPS_CHECK)],
        ),
        base("nat-prerouting", ChainKind::Nat, Hook::Prerouting, -100, vec![Rule::new(vec![], vec![jump(SERVICES)])]),
        base("nat-output", ChainKind::Nat, Hook::Output, -100, vec![Rule::new(vec![], vec![jump(SERVICES)])]),
        base(
            "nat-postrouting",
            ChainKind::Nat,
            Hook::Postrouting,
            100,
            vec![Rule::new(vec![], vec![jump(MASQUERADING)])],
        ),
        plain(
            SERVICES,
            cluster_ip_masquerade(plan)
                .into_iter()
                .chain([
                    Rule::new(vec![], vec![vmap(&target_key, SERVICE_IPS)]),
                    Rule::new(node_port_matches.clone(), vec![vmap(&port_key, SERVICE_NODEPORTS)]),
                ])
                .collect(),
        ),
        plain(FIREWALL_CHECK, vec![Rule::new(vec![], vec![vmap(&target_key, FIREWALL_IPS)])]),
        plain(SERVICE_ENDPOINTS_CHECK, vec![Rule::new(vec![], vec![vmap(&target_key, NO_ENDPOINT_SERVICES)])]),
        plain(
            NODEPORT_ENDPOINTS_CHECK,
            vec![Rule::new(node_port_matches, vec![vmap(&port_key, NO_ENDPOINT_NODEPORTS)])],
        ),
        plain(CLUSTER_IPS_CHECK, cluster_ips_check),
        plain(MARK_FOR_MASQUERADE, vec![Rule::new(vec![], vec![Statement::MarkOr(mask)])]),
        plain(MASQUERADING, masquerading),
        plain(REJECT_CHAIN, vec![Rule::new(vec![], vec![Statement::Reject])]),
    ]
}
