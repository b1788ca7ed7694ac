//! Where load-balancing chains keep their endpoints: ranges of keys in shared
//! endpoint maps. Ranges must never overlap, and must not move when other
//! services come and go, or every such change would rewrite unrelated rules.

use std::collections::{BTreeMap, BTreeSet};

use svcnft_compiler::ruleset::{ElementData, MapData, Statement, Value};
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::{Ruleset, SourceFile};

fn compile(shape: Shape) -> Ruleset {
    let files = [SourceFile { name: "synthetic.svc".into(), text: policy_text(shape, 0) }];
    let checked = svcnft_compiler::check(&files).expect("the synthetic policy is valid");
    svcnft_compiler::compile(&checked.policy, "node-0").expect("node-0 exists").1
}

/// Every `dnat … map` rule: chain name → (map, first key, number of keys).
fn placements(ruleset: &Ruleset) -> BTreeMap<String, (String, u32, u32)> {
    let mut out = BTreeMap::new();
    for chain in &ruleset.tables[0].chains {
        for rule in &chain.rules {
            for statement in &rule.statements {
                if let Statement::DnatMap { modulus, offset, map } = statement {
                    out.insert(chain.name.clone(), (map.clone(), *offset, *modulus));
                }
            }
        }
    }
    out
}

const SHAPE: Shape = Shape { services: 2_000, endpoints_per_service: 10, nodes: 50, affinity_every: 7 };

#[test]
fn every_drawn_key_has_its_own_endpoint() {
    let ruleset = compile(SHAPE);
    let table = &ruleset.tables[0];
    let placed = placements(&ruleset);
    assert!(placed.len() > SHAPE.services / 2, "most chains balance through a map");
    let mut keys: BTreeSet<(String, u32)> = BTreeSet::new();
    for (chain, (map, offset, modulus)) in &placed {
        let map = table.set(map).expect("the map is declared");
        assert_eq!(map.data, Some(MapData::Endpoint));
        for key in *offset..offset + modulus {
            assert!(keys.insert((map.name.clone(), key)), "{chain}: key {key} of {} is taken twice", map.name);
            let element = map.elements.iter().find(|e| e.key[..] == [Value::Index(key)]);
            assert!(
                matches!(element.and_then(|e| e.data.as_ref()), Some(ElementData::Endpoint { .. })),
                "{chain}: key {key} has no endpoint"
            );
        }
    }
    let elements: usize =
        table.sets.iter().filter(|s| s.data == Some(MapData::Endpoint)).map(|s| s.elements.len()).sum();
    assert_eq!(elements, keys.len(), "no endpoint is left without a chain drawing it");
}

#[test]
fn placements_stay_when_services_come_and_go() {
    let before = placements(&compile(SHAPE));
    let more = placements(&compile(Shape { services: SHAPE.services + 3, ..SHAPE }));
    let moved: Vec<&String> = before.keys().filter(|chain| before[*chain] != more[*chain]).collect();
    // A collision with a newcomer can push a range along; anything more is churn.
    assert!(moved.len() <= 2, "{} chains moved: {moved:?}", moved.len());
    assert!(before.len() < more.len());
}
