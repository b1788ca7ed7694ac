//! Hairpin sets: every endpoint address of a family is covered, by one `hairpin`
//! set up to `HAIRPIN_SET_ADDRESSES` addresses, beyond that by a power of two of
//! sets partitioned by the low bits of the address; and a pod reaching itself
//! through its service is masqueraded either way.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use svcnft_compiler::lower::{lower, names, Lowering, HAIRPIN_SET_ADDRESSES};
use svcnft_compiler::plan::NodePlan;
use svcnft_compiler::policy::{Family, Protocol};
use svcnft_compiler::ruleset::{Match, Table, Value};
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::trace::{Packet, TraceOptions, TraceVerdict};
use svcnft_compiler::{Policy, Ruleset, SourceFile};

fn check(text: String) -> Policy {
    let files = [SourceFile { name: "hairpin.svc".into(), text }];
    svcnft_compiler::check(&files).expect("the policy is valid").policy
}

fn plan(policy: &Policy, node: &str) -> NodePlan {
    svcnft_compiler::plan(policy, node).expect("the node exists")
}

/// Dual-stack services over two nodes with `endpoints` endpoint addresses of
/// each family, 10 per service, and `default/self` whose only endpoint is
/// 10.128.0.7 / fd00:244::7 on node-0.
fn dual_stack(endpoints: usize) -> String {
    let mut out = String::from(
        "cluster {\n    cluster-cidr 10.128.0.0/9 fd00:244::/48\n    service-cidr 10.96.0.0/12 fd00:96::/108\n}\n\
         node node-0 { address 10.240.0.10 fd00:240::10; pod-cidr 10.128.0.0/16 fd00:244::/64 }\n\
         node node-1 { address 10.240.0.11 fd00:240::11; pod-cidr 10.129.0.0/16 fd00:244:0:1::/64 }\n\
         service default/self {\n    cluster-ip 10.96.255.1 fd00:96::f:1\n    port 80/tcp target 8080\n}\n\
         endpoints default/self {\n    endpoint 10.128.0.7 node node-0\n    endpoint fd00:244::7 node node-0\n}\n",
    );
    for s in 0..endpoints.div_ceil(10) {
        let (a, b, v6) = (s / 250, s % 250 + 2, s + 2);
        writeln!(out, "service default/svc-{s} {{\n    cluster-ip 10.96.{a}.{b} fd00:96::{v6:x}").unwrap();
        out.push_str("    port 80/tcp target 8080\n}\n");
        writeln!(out, "endpoints default/svc-{s} {{").unwrap();
        for e in 0..10.min(endpoints - s * 10) {
            let i = s * 10 + e + 100;
            let node = i % 2;
            writeln!(out, "    endpoint 10.{}.{}.{} node node-{node}", 128 + node, i / 250, i % 250 + 1).unwrap();
            writeln!(out, "    endpoint fd00:244:0:{node}::{i:x} node node-{node}").unwrap();
        }
        out.push_str("}\n");
    }
    out
}

/// The hairpin sets of a table, in the order of the rules that check them.
fn hairpin_sets(table: &Table) -> Vec<String> {
    let masquerading = table.chain(names::MASQUERADING).expect("every table masquerades");
    masquerading
        .rules
        .iter()
        .flat_map(|r| &r.matches)
        .filter_map(|m| match m {
            Match::InSet { set, .. } => Some(set.clone()),
            _ => None,
        })
        .collect()
}

fn low_bits(address: IpAddr, partitions: usize) -> usize {
    let low = match address {
        IpAddr::V4(a) => u32::from(a) as usize,
        IpAddr::V6(a) => u128::from(a) as usize,
    };
    low & (partitions - 1)
}

/// Every endpoint address of every family is in exactly one hairpin set, the
/// one its low bits name when there are several; returns the number of sets
/// of each table.
fn assert_covered(plan: &NodePlan, ruleset: &Ruleset) -> Vec<usize> {
    let mut counts = Vec::new();
    for family in &plan.families {
        let table = ruleset.table(family.family).expect("a table per planned family");
        let addresses: BTreeSet<IpAddr> =
            family.ports.iter().flat_map(|p| p.all_endpoint_addresses.iter().copied()).collect();
        let sets = hairpin_sets(table);
        let partitions = sets.len();
        assert!(partitions.is_power_of_two(), "{sets:?}");
        if addresses.len() <= HAIRPIN_SET_ADDRESSES {
            assert_eq!(sets, [names::HAIRPIN]);
        } else {
            assert!(partitions > 1 && addresses.len().div_ceil(partitions) <= HAIRPIN_SET_ADDRESSES, "{sets:?}");
            assert!(table.set(names::HAIRPIN).is_none(), "the whole set is not declared too");
        }
        let mut covered = BTreeSet::new();
        for (partition, name) in sets.iter().enumerate() {
            if partitions > 1 {
                assert_eq!(*name, format!("{}-{partition}", names::HAIRPIN));
            }
            let set = table.set(name).unwrap_or_else(|| panic!("{name} is declared"));
            for element in &set.elements {
                let [Value::Addr(a), Value::Addr(b)] = element.key[..] else { panic!("{element:?}") };
                assert_eq!(a, b, "{name}: {element:?}");
                assert_eq!(low_bits(a, partitions), partition, "{a} is in {name}");
                assert!(covered.insert(a), "{a} is in two hairpin sets");
            }
        }
        assert_eq!(covered, addresses, "{:?}: the hairpin sets hold every endpoint address", family.family);
        counts.push(partitions);
    }
    counts
}

#[test]
fn few_endpoint_addresses_keep_one_hairpin_set() {
    let policy = check(dual_stack(HAIRPIN_SET_ADDRESSES - 1));
    let plan = plan(&policy, "node-0");
    assert_eq!(assert_covered(&plan, &lower(&plan)), [1, 1]);
}

#[test]
fn many_endpoint_addresses_are_spread_over_several_hairpin_sets() {
    let policy = check(dual_stack(3 * HAIRPIN_SET_ADDRESSES));
    let plan = plan(&policy, "node-0");
    let ruleset = lower(&plan);
    assert_eq!(assert_covered(&plan, &ruleset), [4, 4]);
    // A pod reaching itself through its service is masqueraded, in both families.
    for (from, to) in [("10.128.0.7", "10.96.255.1:80"), ("fd00:244::7", "[fd00:96::f:1]:80")] {
        let packet = Packet::new(from.parse().unwrap(), to.parse().unwrap(), Protocol::Tcp).unwrap();
        let node = policy.nodes.iter().find(|n| n.name == "node-0").unwrap();
        let trace = svcnft_compiler::trace::trace(&ruleset, node, &packet, &TraceOptions::default());
        assert_eq!(trace.verdict, TraceVerdict::Dnat, "{trace}");
        assert!(trace.masquerade && trace.paths.iter().all(|p| p.masquerade), "{trace}");
        let family = Family::of(packet.from());
        let gateway: IpAddr = if family == Family::Ipv4 { "10.128.0.1" } else { "fd00:244::1" }.parse().unwrap();
        assert_eq!(trace.source_seen, Some(gateway), "{trace}");
    }
}

#[test]
fn remembering_lowers_as_afresh_across_hairpin_partitions() {
    let shape = |services| Shape { services, endpoints_per_service: 10, nodes: 50, affinity_every: 7 };
    let over = HAIRPIN_SET_ADDRESSES / 10 + 10;
    let under = HAIRPIN_SET_ADDRESSES / 10 - 10;
    let texts = [
        policy_text(shape(over), 0),
        policy_text(shape(over), 1),
        policy_text(shape(under), 1),
        policy_text(shape(over), 2),
        policy_text(shape(2 * over), 2),
        policy_text(shape(over), 3),
    ];
    let mut lowering = Lowering::default();
    let mut last: Option<Ruleset> = None;
    for (i, text) in texts.into_iter().enumerate() {
        let plan = plan(&check(text), "node-0");
        let ruleset = lowering.lower(&plan);
        assert_eq!(ruleset, lower(&plan), "step {i}");
        assert_covered(&plan, &ruleset);
        // Moving one endpoint (steps 1 and 5) rebuilds at most the two hairpin
        // sets of its old and new address.
        if let (Some(before), 1 | 5) = (&last, i) {
            let before: Vec<&Arc<_>> = before.tables[0].sets.iter().collect();
            let fresh: Vec<&str> = ruleset.tables[0]
                .sets
                .iter()
                .filter(|s| s.name.starts_with(names::HAIRPIN))
                .filter(|s| !before.iter().any(|b| Arc::ptr_eq(b, s)))
                .map(|s| s.name.as_str())
                .collect();
            assert!(!fresh.is_empty() && fresh.len() <= 2, "step {i}: {fresh:?}");
        }
        last = Some(ruleset);
    }
}
