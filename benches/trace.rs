//! Interpretation of one packet over a node's compiled ruleset, at 10 and 10k
//! services: the tracer follows verdict maps, so its cost should not grow with the
//! number of services. The ruleset is compiled and prepared (`Tracer::new`) once,
//! outside the measurement; `tracer-prepare` measures that step.
//!
//! Run: `cargo bench --bench trace`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use svcnft_compiler::diagnostics::SourceFile;
use svcnft_compiler::policy::Protocol;
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::trace::{trace, Packet, TraceOptions, TraceVerdict, Tracer};

fn packets() -> [(&'static str, Packet); 3] {
    let to = |a: [u8; 4], port| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port);
    let packet = |from: [u8; 4], dest| Packet::new(IpAddr::V4(Ipv4Addr::from(from)), dest, Protocol::Tcp).unwrap();
    [
        // A pod of node-1 to the cluster IP of service 0 (affinity, 10 endpoints).
        ("pod-to-cluster-ip", packet([10, 129, 0, 5], to([10, 96, 0, 1], 80))),
        // An external client to node-0's first node port.
        ("external-to-node-port", packet([203, 0, 113, 7], to([10, 240, 0, 10], 30000))),
        // An unknown port on a live cluster IP: rejected.
        ("unknown-port", packet([10, 129, 0, 5], to([10, 96, 0, 2], 81))),
    ]
}

fn tracer(c: &mut Criterion) {
    let mut group = c.benchmark_group("trace");
    for services in [10, 10_000] {
        let text = policy_text(Shape { services, ..Shape::LARGE }, 0);
        let files = [SourceFile { name: "synthetic.svc".into(), text }];
        let checked = svcnft_compiler::check::check(&files).expect("the synthetic policy is valid");
        let (plan, ruleset) = svcnft_compiler::compile(&checked.policy, "node-0").expect("node-0 exists");
        let options = TraceOptions::default();
        group.bench_function(BenchmarkId::new("tracer-prepare", services), |b| b.iter(|| Tracer::new(&ruleset)));
        let tracer = Tracer::new(&ruleset);
        for (name, packet) in packets() {
            let verdict = trace(&ruleset, &plan.node, &packet, &options).verdict;
            let expected = if name == "unknown-port" { TraceVerdict::Reject } else { TraceVerdict::Dnat };
            assert_eq!(verdict, expected, "{name}");
            group.bench_with_input(BenchmarkId::new(name, services), &packet, |b, packet| {
                b.iter(|| tracer.trace(&plan.node, packet, &options))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, tracer);
criterion_main!(benches);
