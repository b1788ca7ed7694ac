//! Compile time (parse + check + plan + lower + render) of synthetic clusters, to
//! show it grows linearly with the number of services.
//!
//! Run: `cargo bench --bench compile`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use svcnft_compiler::diagnostics::SourceFile;
use svcnft_compiler::synthetic::{policy_text, Shape};

fn compile_text(text: &str) -> usize {
    let files = [SourceFile { name: "synthetic.svc".into(), text: text.to_string() }];
    let checked = svcnft_compiler::check::check(&files).expect("the synthetic policy is valid");
    let (_, ruleset) = svcnft_compiler::compile(&checked.policy, "node-0").expect("node-0 exists");
    svcnft_compiler::render::render(&ruleset).len()
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for services in [100, 1_000, 10_000, 100_000] {
        let text = policy_text(Shape { services, ..Shape::LARGE }, 0);
        group.throughput(Throughput::Elements(services as u64));
        group.bench_with_input(BenchmarkId::from_parameter(services), &text, |b, text| b.iter(|| compile_text(text)));
    }
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
