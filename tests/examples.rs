//! Every example, compiled for every node: checked, snapshot-tested (so every change
//! to generated rules is a reviewable diff) and loaded into a fresh network
//! namespace with `nft -f`.

use std::io::Write;
use std::process::{Command, Stdio};

use svcnft_compiler::render::render;
use svcnft_runtime::testns::{kernel_tests_enabled, TestNs};

mod common;
use common::examples;

fn rulesets() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (example, policy) in examples() {
        for node in &policy.nodes {
            let (_, ruleset) = svcnft_compiler::compile(&policy, &node.name).expect("declared node");
            out.push((format!("{example}@{}", node.name), render(&ruleset)));
        }
    }
    out
}

#[test]
fn every_example_and_node_compiles_to_its_snapshot() {
    for (name, text) in rulesets() {
        insta::with_settings!({ snapshot_path => "../snapshots/rulesets", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(name, text);
        });
    }
}

#[test]
fn compiling_is_deterministic() {
    assert_eq!(rulesets(), rulesets());
}

#[test]
fn every_example_and_node_loads_into_the_kernel() {
    if !kernel_tests_enabled() {
        return;
    }
    for (name, text) in rulesets() {
        let ns = TestNs::new().expect("a test namespace");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: nft -f refused it:\n{}", String::from_utf8_lossy(&out.stderr));
        let listed = Command::new("ip").args(["netns", "exec", ns.name(), "nft", "list", "tables"]).output().unwrap();
        let tables = String::from_utf8_lossy(&listed.stdout);
        assert!(tables.contains("table ip svcnft"), "{name}: {tables}");
    }
}
