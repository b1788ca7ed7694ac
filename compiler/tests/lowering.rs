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
