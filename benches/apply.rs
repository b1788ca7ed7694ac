//! The runtime against the kernel, at 100, 1k and 10k services (10 endpoints each
//! unless `SVCNFT_ENDPOINTS` says otherwise, 50 nodes), each size in a fresh network
//! namespace:
//! - one endpoint changed: netlink messages, and the time of the diff alone, of
//!   diff + encode + send + commit (`ApplyReport::elapsed`) and of the whole `apply`
//!   (with the refresh of rule handles), which must not grow with the policy;
//! - read-back of our tables (`Applier::reread`: list and decode).
//!
//! Needs root, `ip` and `nft`. Run: `cargo bench --bench apply`
//! (`SVCNFT_SIZES=100,1000,10000`, `SVCNFT_ROUNDS=20`, `SVCNFT_ENDPOINTS=10`,
//! `SVCNFT_READS=5` read-backs, of which the median;
//! `SVCNFT_AFFINITY_EVERY=1` gives the moved endpoint's service session affinity).

use std::sync::Arc;
use std::time::{Duration, Instant};

use svcnft_compiler::diagnostics::SourceFile;
use svcnft_compiler::lower::Lowering;
use svcnft_compiler::ruleset::Ruleset;
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_runtime::apply::Applier;
use svcnft_runtime::testns::TestNs;

/// Compiles as the agent does: keeping lowered ports in `lowering`, so that the
/// chains of unchanged services are shared with the previous revision.
fn compile(text: &str, lowering: &mut Lowering) -> Ruleset {
    let files = [SourceFile { name: "synthetic.svc".into(), text: text.into() }];
    let checked = svcnft_compiler::check::check(&files).expect("the synthetic policy is valid");
    lowering.lower(&svcnft_compiler::plan(&checked.policy, "node-0").expect("node-0 exists"))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("SVCNFT_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SVCNFT_SIZES: numbers"))
        .collect();
    let rounds: u32 = std::env::var("SVCNFT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let read_backs: u32 = std::env::var("SVCNFT_READS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    // 1: the moved endpoint's service has session affinity (its rules change).
    let affinity_every: usize =
        std::env::var("SVCNFT_AFFINITY_EVERY").ok().and_then(|r| r.parse().ok()).unwrap_or(Shape::LARGE.affinity_every);
    // Fewer endpoints make fewer rules over the same chains (1: 25k rules at 10k services, 3: 48k).
    let endpoints: usize = std::env::var("SVCNFT_ENDPOINTS").ok().and_then(|e| e.parse().ok()).unwrap_or(10);
    println!(
        "one endpoint changed ({rounds} changes, median) and read-back, {endpoints} endpoints per service, 50 nodes"
    );
    println!(
        "{:>9} {:>9} {:>11} {:>8} {:>16} {:>9} {:>13}",
        "services", "messages", "operations", "diff ms", "diff+commit ms", "apply ms", "read-back ms"
    );
    for services in sizes {
        let shape = Shape { services, endpoints_per_service: endpoints, affinity_every, ..Shape::LARGE };
        let ns = TestNs::new().expect("a namespace");
        let mut applier = ns.run(Applier::open).expect("enter the namespace").expect("open nf_tables");
        let mut lowering = Lowering::default();
        applier.apply(compile(&policy_text(shape, 0), &mut lowering)).expect("cold apply");
        let (mut diff, mut commit, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        let (mut messages, mut operations) = (Vec::new(), Vec::new());
        let mut desired = Arc::new(Ruleset::default());
        // Each revision moves the one endpoint again.
        for revision in 1..=rounds {
            desired = Arc::new(compile(&policy_text(shape, revision), &mut lowering));
            let start = Instant::now();
            std::hint::black_box(applier.plan(&desired));
            diff.push(start.elapsed());
            let start = Instant::now();
            let report = applier.apply(desired.clone()).expect("the kernel takes the change");
            whole.push(start.elapsed());
            commit.push(report.elapsed);
            messages.push(report.messages);
            operations.push(report.operations);
        }
        let mut reads = Vec::new();
        for _ in 0..read_backs {
            let start = Instant::now();
            applier.reread().expect("read-back");
            reads.push(start.elapsed());
        }
        assert!(applier.plan(&desired).is_empty(), "read-back equals the last revision");
        messages.sort();
        operations.sort();
        println!(
            "{services:>9} {:>9} {:>11} {:>8.2} {:>16.2} {:>9.2} {:>13.1}",
            messages[messages.len() / 2],
            operations[operations.len() / 2],
            ms(median(diff)),
            ms(median(commit)),
            ms(median(whole)),
            ms(median(reads)),
        );
    }
}
