//! File change → kernel commit latency of the agent at 10k services: the policy
//! file is rewritten with one endpoint changed, and the time is taken from the
//! start of the write (and from its end: writing 5 MB takes milliseconds) to the
//! end of the sync (watch events, debounce, read, check, compile, diff, one
//! batch; then the rule handles of changed chains are read back), driving the
//! agent's watcher, debounce and syncer in-process in a namespace. The write
//! closes the file, which settles the change, so the debounce does not wait.
//!
//! Needs root. Run: `cargo bench --bench agent_sync`
//! (scale: `SVCNFT_SERVICES=10000`, samples: `SVCNFT_SAMPLES=30`).

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use svcnft_compiler::check::Incremental;
use svcnft_compiler::lower::Lowering;
use svcnft_compiler::plan::Planning;
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::Ruleset;
use svcnft_runtime::agent::{debounce, Metrics, PolicyWatcher, Status, Syncer};
use svcnft_runtime::apply::Applier;
use svcnft_runtime::testns::TestNs;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<28} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap())
    );
}

/// What the agent keeps from one compile to the next.
#[derive(Default)]
struct Memos {
    front: Incremental,
    planning: Planning,
    lowering: Lowering,
}

/// Where a sync's time goes before the kernel: read, parse and check, plan and
/// lower of `path` (each keeping what it did in `memos`, as the agent does),
/// and the diff from `previous`; returns the ruleset for the next diff.
fn stages(path: &std::path::Path, memos: &mut Memos, previous: &Ruleset, into: &mut [Vec<Duration>; 5]) -> Ruleset {
    let mut lap = Instant::now();
    let mut took = |stage: usize| {
        into[stage].push(lap.elapsed());
        lap = Instant::now();
    };
    let files = svcnft_runtime::sources::read_policy(&[path.to_path_buf()]).unwrap();
    took(0);
    let checked = memos.front.check(&files).expect("valid");
    took(1);
    let plan = memos.planning.plan(&checked.policy, "node-0").unwrap();
    took(2);
    let ruleset = memos.lowering.lower(&plan);
    took(3);
    svcnft_compiler::diff::diff(previous, &ruleset);
    took(4);
    ruleset
}

fn main() {
    let shape = Shape { services: env_usize("SVCNFT_SERVICES", Shape::LARGE.services), ..Shape::LARGE };
    let samples = env_usize("SVCNFT_SAMPLES", 30);
    let dir = std::env::temp_dir().join(format!("svcnft-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.svc");
    // The moved endpoint's address alternates between 10.128.255.3 and
    // 10.128.255.12: every other edit changes the file's length, which moves
    // every item after it.
    let texts = [policy_text(shape, 1), policy_text(shape, 10)];
    std::fs::write(&path, policy_text(shape, 0)).unwrap();

    let ns = TestNs::new().expect("a network namespace (root)");
    ns.run(|| {
        let status = Arc::new(Status::new(Duration::from_secs(30)));
        let mut syncer = Syncer::new(
            vec![path.clone()],
            "node-0".into(),
            Applier::open().expect("nf_tables"),
            status,
            Arc::new(Metrics::new()),
        );
        let cold = Instant::now();
        let first = syncer.reload().expect("cold sync");
        println!(
            "{} services: cold sync {} operations in {:.0} ms",
            shape.services,
            first.operations,
            cold.elapsed().as_secs_f64() * 1e3
        );

        let (tx, rx) = mpsc::channel();
        let _watcher = PolicyWatcher::start(std::slice::from_ref(&path), tx).expect("watch");
        let (mut total, mut written, mut event, mut commit, mut operations) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
        let mut breakdown: [Vec<Duration>; 5] = Default::default();
        let mut memos = Memos::default();
        let mut previous = stages(&path, &mut memos, &Ruleset::default(), &mut Default::default());
        for i in 0..samples {
            let started = Instant::now();
            std::fs::write(&path, &texts[i % 2]).unwrap();
            let changed = Instant::now();
            let first = rx.recv_timeout(Duration::from_secs(5)).expect("a watch event");
            debounce(&rx, first).expect("no stop");
            event.push(started.elapsed());
            let report = syncer.reload().expect("sync");
            total.push(started.elapsed());
            written.push(changed.elapsed());
            commit.push(report.elapsed);
            operations = report.operations;
            previous = stages(&path, &mut memos, &previous, &mut breakdown);
            // Events of this write still in flight must not time the next one.
            std::thread::sleep(Duration::from_millis(100));
            while rx.try_recv().is_ok() {}
        }
        println!("one endpoint changed: {operations} operations per sync, {samples} samples");
        report("write → settled change", event);
        report("diff + encode + commit", commit);
        report("write → commit (total)", total);
        report("written → commit", written);
        println!("breakdown, timed again outside the sync:");
        let names =
            ["read", "parse + check (changed items)", "plan (changed services)", "lower (changed ports)", "diff"];
        for (name, samples) in names.into_iter().zip(breakdown) {
            report(name, samples);
        }
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
