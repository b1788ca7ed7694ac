//! Lowering that remembers: whatever sequence of plans it sees, its result is
//! exactly what lowering each plan afresh gives, and chains of unchanged ports
//! are shared with the previous result.

use std::collections::HashMap;
use std::sync::Arc;

use svcnft_compiler::lower::{lower, Lowering};
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::{NodePlan, Ruleset, SourceFile};

fn plan(text: String) -> NodePlan {
    let files = [SourceFile { name: "synthetic.svc".into(), text }];
    let checked = svcnft_compiler::check(&files).expect("the synthetic policy is valid");
    svcnft_compiler::plan(&checked.policy, "node-0").expect("node-0 exists")
}

fn chains(ruleset: &Ruleset) -> HashMap<&str, &Arc<svcnft_compiler::ruleset::Chain>> {
    ruleset.tables[0].chains.iter().map(|c| (c.name.as_str(), c)).collect()
}

const SHAPE: Shape = Shape { services: 300, endpoints_per_service: 4, nodes: 5, affinity_every: 7 };

#[test]
fn remembering_lowers_as_lowering_afresh() {
    let texts = [
        policy_text(SHAPE, 0),
        policy_text(SHAPE, 1),
        policy_text(SHAPE, 2),
        policy_text(Shape { services: 310, ..SHAPE }, 2),
        policy_text(Shape { services: 120, ..SHAPE }, 2),
        policy_text(Shape { affinity_every: 3, ..SHAPE }, 0),
        // Enough endpoints for more endpoint maps: every placement moves.
        policy_text(Shape { services: 300, endpoints_per_service: 9, ..SHAPE }, 0),
        policy_text(SHAPE, 0).replace("cluster-cidr 10.128.0.0/9", "cluster-cidr 10.128.0.0/10"),
        policy_text(SHAPE, 3),
    ];
    let mut lowering = Lowering::default();
    for (i, text) in texts.into_iter().enumerate() {
        let plan = plan(text);
        assert_eq!(lowering.lower(&plan), lower(&plan), "step {i}");
    }
}

/// Another service sharing endpoint addresses with service 1, so that elements
/// of the hairpin set have more than one contributor.
const SHARING: &str = "
service default/sharing {
    cluster-ip 10.96.200.1
    port 80/tcp target 8080
}
endpoints default/sharing {
    endpoint 10.132.0.2 node node-4
    endpoint 10.132.255.3 node node-4
}
";

#[test]
fn elements_with_several_contributors_stay_until_the_last_goes() {
    // Revision 1 moves service 1's endpoint 10.132.0.2 to 10.132.255.3.
    let steps = [
        policy_text(SHAPE, 0) + SHARING,
        policy_text(SHAPE, 1) + SHARING,
        policy_text(SHAPE, 1),
        policy_text(SHAPE, 0),
        policy_text(SHAPE, 2) + SHARING,
    ];
    let mut lowering = Lowering::default();
    for (i, text) in steps.into_iter().enumerate() {
        let plan = plan(text);
        assert_eq!(lowering.lower(&plan), lower(&plan), "step {i}");
    }
}

#[test]
fn unchanged_ports_keep_their_chains() {
    let mut lowering = Lowering::default();
    let before = lowering.lower(&plan(policy_text(SHAPE, 1)));
    let after = lowering.lower(&plan(policy_text(SHAPE, 2)));
    let sets_before: HashMap<&str, _> = before.tables[0].sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let fresh_sets: Vec<&str> = after.tables[0]
        .sets
        .iter()
        .filter(|s| !Arc::ptr_eq(s, sets_before[s.name.as_str()]))
        .map(|s| s.name.as_str())
        .collect();
    // The moved endpoint's address changes the hairpin set and one endpoint map.
    assert_eq!(fresh_sets.len(), 2, "{fresh_sets:?}");
    assert!(fresh_sets[0] == "hairpin" && fresh_sets[1].starts_with("endpoints-"), "{fresh_sets:?}");
    let (before, after) = (chains(&before), chains(&after));
    let fresh: Vec<&&str> = after.keys().filter(|name| !Arc::ptr_eq(after[*name], before[*name])).collect();
    // Revisions move one endpoint of service 1: only its chain, and the base
    // chains (always rebuilt, a handful), are lowered again.
    let services: Vec<&&&str> = fresh.iter().filter(|name| name.contains("default/svc-")).collect();
    assert_eq!(services, [&&"cluster-default/svc-1/tcp/80"]);
    assert!(fresh.len() < 20, "{fresh:?}");
}

/// kube-proxy's first rule of every service port's chain, `ip daddr VIP meta
/// l4proto P th dport PORT ip saddr != CIDR jump mark-for-masquerade`, is one
/// rule of the `services` chain over a set of those ports.
#[test]
fn cluster_ip_masquerade_is_one_rule_over_a_set() {
    use svcnft_compiler::lower::names::{CLUSTER_IP_PORTS, MARK_FOR_MASQUERADE, SERVICES};
    use svcnft_compiler::ruleset::{Field, Match, Statement, Value, Verdict};

    let text = policy_text(SHAPE, 0);
    let cases = [
        (text.clone(), Some(vec!["10.128.0.0/9"])),
        (
            text.replace("cluster-cidr 10.128.0.0/9", "cluster-cidr 10.128.0.0/10 10.192.0.0/10"),
            Some(vec!["10.128.0.0/10", "10.192.0.0/10"]),
        ),
        (text.replace("cluster-cidr 10.128.0.0/9", "masquerade-all on"), Some(vec![])),
        (text.replace("cluster-cidr 10.128.0.0/9", ""), None),
    ];
    for (i, (text, sources)) in cases.into_iter().enumerate() {
        let ruleset = lower(&plan(text));
        let table = &ruleset.tables[0];
        let marks = |rule: &svcnft_compiler::ruleset::Rule| {
            rule.statements.contains(&Statement::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into())))
        };
        for chain in table.chains.iter().filter(|c| c.name.starts_with("cluster-") || c.name.starts_with("local-")) {
            assert!(!chain.rules.iter().any(marks), "case {i}: {} marks for masquerade", chain.name);
        }
        let services = table.chain(SERVICES).expect("a services chain");
        let Some(sources) = sources else {
            assert!(!services.rules.iter().any(marks), "case {i}: nothing to masquerade");
            assert!(table.set(CLUSTER_IP_PORTS).is_none(), "case {i}");
            continue;
        };
        let rule = &services.rules[0];
        assert!(marks(rule), "case {i}: {rule:?}");
        let mut expected: Vec<Match> = sources
            .iter()
            .map(|s| Match::Cmp { field: Field::Saddr, negate: true, value: Value::Net(s.parse().unwrap()) })
            .collect();
        expected.push(Match::InSet {
            key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
            set: CLUSTER_IP_PORTS.into(),
            negate: false,
        });
        assert_eq!(rule.matches, expected, "case {i}");
        // Every service of the shape has endpoints: every cluster IP's port is there.
        let set = table.set(CLUSTER_IP_PORTS).expect("the set is declared");
        assert_eq!(set.elements.len(), SHAPE.services, "case {i}");
        assert!(set.elements.iter().all(|e| e.key[2] == Value::Port(80)), "case {i}");
    }
}

/// Random sequences of plans, built directly (no policy text), so that they
/// reach what policies rarely do in a few steps: families coming and going,
/// settings changing, ports reordered, affinity toggled, many endpoint maps.
mod generated {
    use std::net::IpAddr;
    use std::num::NonZeroU16;
    use std::time::Duration;

    use proptest::prelude::*;
    use svcnft_compiler::plan::{
        EndpointSet, ExternalChain, ExternalRoute, FamilyPlan, NodePlan, NodePortScope, PortId, PortPlan, Refusal,
        Route, Target,
    };
    use svcnft_compiler::policy::{Family, Node, Protocol, ServiceName};

    fn addr(family: Family, host: u16) -> IpAddr {
        match family {
            Family::Ipv4 => IpAddr::from([10, 1, (host >> 8) as u8, host as u8]),
            Family::Ipv6 => IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 1, host]),
        }
    }

    fn targets(family: Family, most: usize) -> impl Strategy<Value = Vec<Target>> {
        prop::collection::vec((0u16..64, 8000u16..8003), 0..most).prop_map(move |t| {
            t.into_iter()
                .map(|(host, port)| Target { address: addr(family, host), port: NonZeroU16::new(port).unwrap() })
                .collect()
        })
    }

    fn refusal() -> impl Strategy<Value = Refusal> {
        prop_oneof![Just(Refusal::Drop), Just(Refusal::Reject)]
    }

    fn endpoint_set() -> impl Strategy<Value = EndpointSet> {
        prop_oneof![Just(EndpointSet::Cluster), Just(EndpointSet::Local)]
    }

    fn external() -> impl Strategy<Value = Option<ExternalRoute>> {
        let chain = (any::<bool>(), any::<bool>(), prop::option::of(endpoint_set()), prop::option::of(refusal()))
            .prop_map(|(masquerade, short_circuit, target, refuse)| {
                ExternalRoute::Chain(ExternalChain { masquerade, short_circuit, target, refuse })
            });
        prop_oneof![Just(None), Just(Some(ExternalRoute::Reject)), chain.prop_map(Some)]
    }

    /// The port in `slot` of a family: the same id whenever the slot is filled.
    fn port(family: Family, slot: u16, most: usize) -> impl Strategy<Value = PortPlan> {
        let addresses = (0u16..4, prop::collection::vec(0u16..4, 0..2), prop::collection::vec(0u16..4, 0..2));
        let routes = (
            prop_oneof![endpoint_set().prop_map(Route::To), refusal().prop_map(Route::Refuse)],
            external(),
            prop::option::of(30000u16..30003),
            any::<bool>(),
            any::<bool>(),
        );
        let affinity = prop::option::of(prop_oneof![Just(10u64), Just(20)]);
        (targets(family, most), targets(family, most / 2), addresses, routes, affinity, any::<bool>()).prop_map(
            move |(cluster, local, (ip, external_ips, lb_ips), routes, affinity, dedup)| {
                let (internal, external, node_port, source_ranges, allow_from_lb_ips) = routes;
                let mut all_endpoint_addresses: Vec<IpAddr> = cluster.iter().chain(&local).map(|t| t.address).collect();
                if dedup {
                    all_endpoint_addresses.sort();
                    all_endpoint_addresses.dedup();
                }
                let range = match family {
                    Family::Ipv4 => "192.168.0.0/16",
                    Family::Ipv6 => "fd01::/64",
                };
                PortPlan {
                    id: PortId {
                        service: ServiceName { namespace: "ns".into(), name: format!("s{}", slot / 2) },
                        port: 80 + slot % 2,
                        protocol: if slot.is_multiple_of(3) { Protocol::Udp } else { Protocol::Tcp },
                    },
                    cluster_ip: addr(family, 0x100 + ip),
                    external_ips: external_ips.into_iter().map(|a| addr(family, 0x200 + a)).collect(),
                    load_balancer_ips: lb_ips.into_iter().map(|a| addr(family, 0x300 + a)).collect(),
                    node_port: node_port.and_then(NonZeroU16::new),
                    source_ranges: if source_ranges { vec![range.parse().unwrap()] } else { Vec::new() },
                    allow_from_lb_ips,
                    session_affinity: affinity.map(Duration::from_secs),
                    cluster_endpoints: cluster,
                    local_endpoints: local,
                    internal,
                    external,
                    serving_endpoint_addresses: all_endpoint_addresses.clone(),
                    all_endpoint_addresses,
                }
            },
        )
    }

    /// A family with some of `slots` ports, or `None` when the family is absent.
    fn family(family: Family, slots: u16, most: usize) -> impl Strategy<Value = Option<FamilyPlan>> {
        let ports: Vec<_> = (0..slots).map(|slot| prop::option::weighted(0.6, port(family, slot, most))).collect();
        let settings = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
        let cidr = match family {
            Family::Ipv4 => "10.0.0.0/8",
            Family::Ipv6 => "fd00::/16",
        };
        prop::option::weighted(0.8, (ports, settings)).prop_map(move |planned| {
            planned.map(|(ports, (cidrs, masquerade_all, all_local, reversed))| {
                let mut ports: Vec<PortPlan> = ports.into_iter().flatten().collect();
                if reversed {
                    ports.reverse();
                }
                FamilyPlan {
                    family,
                    cluster_cidrs: if cidrs { vec![cidr.parse().unwrap()] } else { Vec::new() },
                    service_cidrs: Vec::new(),
                    masquerade_all,
                    node_ports_on: if all_local {
                        NodePortScope::AllLocal
                    } else {
                        NodePortScope::Addresses(vec![addr(family, 0x400)])
                    },
                    ports: ports.into_iter().map(std::sync::Arc::new).collect(),
                }
            })
        })
    }

    pub fn plan(slots: u16, most: usize) -> impl Strategy<Value = NodePlan> {
        (family(Family::Ipv4, slots, most), family(Family::Ipv6, slots, most), any::<bool>()).prop_map(
            |(ipv4, ipv6, swapped)| {
                let mut families: Vec<FamilyPlan> = [ipv4, ipv6].into_iter().flatten().collect();
                if swapped {
                    families.reverse();
                }
                let node = Node {
                    name: "n".into(),
                    addresses: Vec::new(),
                    local_addresses: Vec::new(),
                    pod_cidrs: Vec::new(),
                    zone: None,
                };
                NodePlan { node, families, health_checks: Vec::new() }
            },
        )
    }
}

/// One `Lowering` over `plans` gives, at every step, what lowering afresh gives.
fn lowers_as_afresh(plans: &[NodePlan]) -> Result<(), proptest::test_runner::TestCaseError> {
    let mut lowering = Lowering::default();
    for (i, plan) in plans.iter().enumerate() {
        proptest::prop_assert_eq!(lowering.lower(plan), lower(plan), "step {}", i);
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

    #[test]
    fn remembering_lowers_random_plan_sequences_as_afresh(
        plans in proptest::collection::vec(generated::plan(10, 6), 2..8),
    ) {
        lowers_as_afresh(&plans)?;
    }

    // Enough endpoints for several endpoint maps, whose number then changes.
    #[test]
    fn remembering_lowers_as_afresh_across_endpoint_map_counts(
        plans in proptest::collection::vec(generated::plan(40, 60), 2..5),
    ) {
        lowers_as_afresh(&plans)?;
    }
}
