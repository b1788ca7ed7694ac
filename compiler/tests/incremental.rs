//! The incremental check against the full one: after every edit of a sequence (items
//! changed, moved, deleted and duplicated, comments, syntax and semantic errors, files
//! added and reordered) both give the same policy and the same diagnostics.

use svcnft_compiler::check::{check, Incremental};
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::SourceFile;

const LAB: &str = include_str!("../../examples/source-ip-lab.svc");
const TOPOLOGY: &str = include_str!("../../examples/topology.svc");
const FULL: &str = include_str!("inputs/full.svc");

fn files(sources: &[(&str, &str)]) -> Vec<SourceFile> {
    sources.iter().map(|(name, text)| SourceFile { name: (*name).to_owned(), text: (*text).to_owned() }).collect()
}

/// Checks each version in turn with one `Incremental`, comparing with `check`.
fn same_as_check(versions: &[Vec<SourceFile>]) {
    let mut incremental = Incremental::default();
    for (step, files) in versions.iter().enumerate() {
        let expected = check(files);
        let got = incremental.check(files);
        match (got, expected) {
            (Ok(got), Ok(expected)) => {
                assert_eq!(got.policy, expected.policy, "step {step}");
                assert_eq!(got.warnings.render(files), expected.warnings.render(files), "step {step}");
                assert_eq!(got.warnings, expected.warnings, "step {step}");
            }
            (Err(got), Err(expected)) => {
                assert_eq!(got.render(files), expected.render(files), "step {step}");
                assert_eq!(got, expected, "step {step}");
            }
            (got, expected) => panic!("step {step}: {got:?}\nbut check gives\n{expected:?}"),
        }
    }
}

/// `text` with the first `from` replaced by `to`, which must be there.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is in the text");
    text.replacen(from, to, 1)
}

#[test]
fn edits_of_one_file() {
    let shape = Shape { services: 30, endpoints_per_service: 3, nodes: 4, affinity_every: 7 };
    let base = policy_text(shape, 0);
    let steps = [
        base.clone(),
        policy_text(shape, 1),
        policy_text(shape, 20),
        // A service gone: its endpoints name no service.
        edit(&base, "service default/svc-3 {", "service default/gone {"),
        // A syntax error, then the fix.
        edit(&base, "port 80/tcp target 8080\n", "port 80\n"),
        edit(&base, "cluster-ip 10.96.0.4\n", "cluster-ip 10.96.0.40\n"),
        // A comment with braces, and a longer line early in the file.
        edit(&base, "node node-1 {", "# { not an item }\nnode node-1 {"),
        edit(&base, "cluster-cidr 10.128.0.0/9", "cluster-cidr 10.128.0.0/9 fd00::/64"),
        // Two items swapped, one duplicated (a duplicate declaration).
        edit(&base, "node node-0 {", "node node-1 {"),
        format!("{base}\nservice default/svc-2 {{ cluster-ip 10.96.0.3; port 80/tcp }}\n"),
        // An unclosed block, then everything back.
        format!("{base}\nnode extra {{ address 10.0.0.1\n"),
        base.clone(),
        String::new(),
        base,
    ];
    let versions: Vec<_> = steps.iter().map(|text| files(&[("cluster.svc", text)])).collect();
    same_as_check(&versions);
}

#[test]
fn semantic_errors_and_warnings_point_into_moved_items() {
    let bad = edit(LAB, "node-port 30081", "node-port 30080");
    let steps = [
        LAB.to_owned(),
        bad.clone(),
        format!("# a longer\n# header\n{bad}"),
        edit(&format!("# a longer\n# header\n{bad}"), "node node-2 {", "node node-2 { zone a;"),
        FULL.to_owned(),
        format!("\n\n{FULL}"),
    ];
    let versions: Vec<_> = steps.iter().map(|text| files(&[("lab.svc", text)])).collect();
    same_as_check(&versions);
}

#[test]
fn files_added_removed_and_reordered() {
    let versions = [
        files(&[("a.svc", LAB)]),
        files(&[("a.svc", LAB), ("b.svc", TOPOLOGY)]),
        files(&[("b.svc", TOPOLOGY), ("a.svc", LAB)]),
        files(&[("b.svc", "node {\n"), ("a.svc", LAB)]),
        files(&[("b.svc", TOPOLOGY)]),
        files(&[("a.svc", LAB), ("a.svc", LAB)]),
    ];
    same_as_check(&versions);
}

/// Two files; named targets (a warning while unresolved) in services after the
/// endpoints blocks that the edits grow and shrink.
const NODES: &str = "node node-1 { address 10.240.0.3; pod-cidr 10.244.1.0/24 }
node node-2 { address 10.240.0.4; pod-cidr 10.244.2.0/24 }
endpoints default/web { endpoint 10.244.1.5 node node-1 }
";
const SERVICES: &str = "endpoints default/api {
    port http 8080
    endpoint 10.244.1.7 node node-1
}
service default/web { cluster-ip 10.96.0.10; port 80/tcp }
service default/api {
    cluster-ip 10.96.0.11
    port http 80/tcp target web-port
    port grpc 9000/tcp target grpc-port
}
service default/idle { cluster-ip 10.96.0.12; port 80/tcp target named }
endpoints default/idle { endpoint 10.244.2.9 node node-2 }
";

#[test]
fn endpoints_edits_alone_recheck_only_their_blocks() {
    let api = "    port http 8080\n    endpoint 10.244.1.7 node node-1\n";
    let web = "endpoints default/web { endpoint 10.244.1.5 node node-1 }";
    let with = |nodes: &str, services: &str| files(&[("nodes.svc", nodes), ("services.svc", services)]);
    let versions = [
        with(NODES, SERVICES),
        // An endpoint added, one readdressed, one moved to the other node.
        with(NODES, &edit(SERVICES, api, &format!("{api}    endpoint 10.244.2.3 node node-2 not-ready\n"))),
        with(&edit(NODES, "10.244.1.5 node node-1", "10.244.1.6 node node-2"), SERVICES),
        // The warning for `grpc-port` goes and comes back; the block grows, so the
        // warnings of the services after it move.
        with(NODES, &edit(SERVICES, api, &format!("    port grpc 9090\n{api}    endpoint 10.244.1.8\n"))),
        with(NODES, SERVICES),
        // Errors inside a block: the last good policy stays for the next edit.
        with(NODES, &edit(SERVICES, "10.244.1.7 node node-1", "10.244.1.7 node node-9")),
        with(NODES, &edit(SERVICES, "port http 8080", "port 8080")),
        with(NODES, &edit(SERVICES, "port http 8080", "port nope 8080")),
        with(NODES, &edit(SERVICES, api, &format!("{api}    endpoint 10.244.1.7 ready\n"))),
        with(
            &edit(NODES, web, "endpoints default/web { endpoint 10.244.1.300 node node-1 terminating ready }"),
            SERVICES,
        ),
        with(NODES, SERVICES),
        // A block emptied, then renamed to another service: a full check.
        with(&edit(NODES, web, "endpoints default/web { }"), SERVICES),
        with(&edit(NODES, web, "endpoints default/idle { }"), SERVICES),
        with(NODES, SERVICES),
        // A service changed together with an endpoints block.
        with(NODES, &edit(&edit(SERVICES, "10.96.0.12", "10.96.0.13"), "10.244.2.9", "10.244.2.10")),
        with(NODES, SERVICES),
    ];
    same_as_check(&versions);
}

mod random_edits {
    use proptest::prelude::*;

    use svcnft_compiler::lower::{lower, Lowering};
    use svcnft_compiler::plan::{plan, Planning};

    use super::*;

    /// An edit of the synthetic policy: a whole endpoints block rewritten (most
    /// often), a service's cluster IP changed, or an invalid endpoint added.
    #[derive(Debug, Clone)]
    enum Edit {
        Endpoints {
            service: usize,
            endpoints: Vec<(u8, u8, bool)>,
        },
        ClusterIp {
            service: usize,
            last: u8,
        },
        Break {
            service: usize,
        },
        Zone {
            node: usize,
        },
        /// Internal traffic policy local: what the node gets depends on which node it is.
        Local {
            service: usize,
        },
    }

    fn edit_strategy() -> impl Strategy<Value = Edit> {
        prop_oneof![
            6 => (0..12usize, prop::collection::vec((0..4u8, 1..250u8, any::<bool>()), 0..4))
                .prop_map(|(service, endpoints)| Edit::Endpoints { service, endpoints }),
            1 => (0..12usize, 1..250u8).prop_map(|(service, last)| Edit::ClusterIp { service, last }),
            1 => (0..12usize).prop_map(|service| Edit::Break { service }),
            1 => (0..4usize).prop_map(|node| Edit::Zone { node }),
            1 => (0..12usize).prop_map(|service| Edit::Local { service }),
        ]
    }

    /// The text of block `service` of `text` (from its keyword to its `}`).
    fn block(text: &str, service: usize) -> (usize, usize) {
        let start = text.find(&format!("endpoints default/svc-{service} {{")).expect("the block is there");
        (start, start + text[start..].find('}').expect("the block ends") + 1)
    }

    fn apply(text: &str, edit: &Edit) -> String {
        let mut out = text.to_owned();
        match edit {
            Edit::Endpoints { service, endpoints } => {
                let (start, end) = block(text, *service);
                let mut body = format!("endpoints default/svc-{service} {{\n");
                for (node, last, ready) in endpoints {
                    let condition = if *ready { "" } else { " terminating" };
                    body.push_str(&format!("    endpoint 10.130.0.{last} node node-{node}{condition}\n"));
                }
                body.push('}');
                out.replace_range(start..end, &body);
            }
            Edit::ClusterIp { service, last } => {
                let from = format!("    cluster-ip 10.96.0.{}\n", service + 1);
                if out.contains(&from) {
                    out = out.replacen(&from, &format!("    cluster-ip 10.97.{service}.{last}\n"), 1);
                }
            }
            Edit::Break { service } => {
                let (start, _) = block(text, *service);
                let body = start + text[start..].find('\n').expect("the block has lines") + 1;
                out.insert_str(body, "    endpoint 10.130.0.999 node node-0\n");
            }
            Edit::Local { service } => {
                let ip = format!("    cluster-ip 10.96.0.{}\n", service + 1);
                out = out.replacen(&ip, &format!("{ip}    internal-traffic-policy local\n"), 1);
            }
            Edit::Zone { node } => {
                let from = format!("node node-{node} {{ address");
                let to = format!("node node-{node} {{ zone z{}; address", out.len() % 3);
                out = out.replacen(&from, &to, 1);
            }
        }
        out
    }

    /// The versions of the synthetic policy after each of `edits`.
    fn versions(edits: &[Edit]) -> Vec<Vec<SourceFile>> {
        let shape = Shape { services: 12, endpoints_per_service: 2, nodes: 4, affinity_every: 5 };
        let mut text = apply(&policy_text(shape, 0), &Edit::Local { service: 3 });
        let mut versions = vec![files(&[("cluster.svc", &text)])];
        for edit in edits {
            text = apply(&text, edit);
            versions.push(files(&[("cluster.svc", &text)]));
        }
        versions
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// Sequences of edits, each applied to the last version (a broken block is
        /// fixed by the next rewrite of it or stays broken): the incremental check
        /// always equals the full one.
        #[test]
        fn equal_the_full_check(edits in prop::collection::vec(edit_strategy(), 1..12)) {
            same_as_check(&versions(&edits));
        }

        /// The agent's whole compile: the policies of incremental checks, planned
        /// and lowered by memos kept from edit to edit (for one node, then
        /// another), equal fresh plans and rulesets.
        #[test]
        fn plan_and_lower_as_afresh(edits in prop::collection::vec(edit_strategy(), 1..12), switch in 0..12usize) {
            let mut incremental = Incremental::default();
            let mut planning = Planning::default();
            let mut lowering = Lowering::default();
            for (step, files) in versions(&edits).iter().enumerate() {
                let Ok(checked) = incremental.check(files) else { continue };
                let node = if step < switch { "node-0" } else { "node-1" };
                let expected = plan(&checked.policy, node).expect("the node exists");
                let got = planning.plan(&checked.policy, node).expect("the node exists");
                prop_assert_eq!(&got, &expected, "step {}", step);
                prop_assert_eq!(lowering.lower(&got), lower(&expected), "step {}", step);
            }
        }
    }
}
