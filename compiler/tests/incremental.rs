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
