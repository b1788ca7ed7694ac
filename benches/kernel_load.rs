//! Cold load of one node's ruleset into a fresh network namespace, side by side in
//! one run: svcnft's Applier end to end (compile + encode + one netlink commit),
//! `nft -f` of our own rendering, and `nft -f` of kube-proxy's shape (a chain per
//! service with an anonymous `numgen … vmap`, a chain per endpoint) of the same
//! cluster. Each load gets its own fresh namespace.
//!
//! Needs root, `ip` and `nft`. Run: `cargo bench --bench kernel_load`
//! (scale: `SVCNFT_SERVICES=10000 SVCNFT_ENDPOINTS=10`; `SVCNFT_AFFINITY_EVERY=0`
//! drops session affinity, whose per-endpoint sets the kernel creates and looks
//! up by name in time growing with the number of sets; `SVCNFT_SKIP_KUBE_PROXY=1`
//! skips the slow shape).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use svcnft_compiler::diagnostics::SourceFile;
use svcnft_compiler::render::{family_keyword, render};
use svcnft_compiler::ruleset::{ElementData, MapData, Match, Rule, Ruleset, Statement, Value};
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_runtime::apply::Applier;
use svcnft_runtime::testns::TestNs;

/// Loads a ruleset file with `nft -f` into a fresh namespace and returns the wall time.
fn nft_load(path: &Path) -> Duration {
    let ns = TestNs::new().expect("a namespace");
    let start = Instant::now();
    ns.nft(&["-f", path.to_str().expect("UTF-8 path")], None).expect("nft -f loads it");
    start.elapsed()
}

/// Compiles `text` for node-0 and applies it over netlink to a fresh namespace:
/// the wall time of the whole, and of the Applier's open + apply alone.
fn netlink_apply(text: &str) -> (Duration, Duration) {
    let ns = TestNs::new().expect("a namespace");
    let start = Instant::now();
    let ruleset = Arc::new(compile(text));
    let compiled = start.elapsed();
    let report = ns
        .run(|| Applier::open().and_then(|mut applier| applier.apply(ruleset.clone())))
        .expect("enter the namespace")
        .expect("the kernel takes it");
    assert!(report.operations > 0 && report.retries == 0);
    let total = start.elapsed();
    drop(ns);
    drop(ruleset);
    (total, total - compiled)
}

fn compile(text: &str) -> Ruleset {
    let files = [SourceFile { name: "synthetic.svc".into(), text: text.into() }];
    let checked = svcnft_compiler::check::check(&files).expect("the synthetic policy is valid");
    svcnft_compiler::compile(&checked.policy, "node-0").expect("node-0 exists").1
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The same services in kube-proxy's shape: each policy chain keeps its masquerade
/// rule and load-balances with `numgen random mod N vmap { … }` to one chain per
/// endpoint, which checks hairpin and DNATs. (Affinity rules are left out, which
/// only flatters this shape.)
fn kube_proxy_shape(ruleset: &Ruleset) -> String {
    let mut plain = ruleset.clone();
    let mut extra = String::new();
    let mut endpoint_chains = 0usize;
    for table in &mut plain.tables {
        let family = family_keyword(table.family);
        let mut chains = std::mem::take(&mut table.chains);
        // The endpoints a rule DNATs to: its own, or those its draw maps to.
        let endpoints_of = |rule: &Rule| -> Vec<(IpAddr, u16)> {
            rule.statements
                .iter()
                .flat_map(|s| match s {
                    Statement::Dnat { address, port } => vec![(*address, *port)],
                    Statement::DnatMap { modulus, offset, map } => {
                        let set = table.set(map).expect("the endpoint map is declared");
                        (*offset..offset + modulus)
                            .filter_map(|key| {
                                let element = set.elements.iter().find(|e| e.key[..] == [Value::Index(key)])?;
                                match element.data {
                                    Some(ElementData::Endpoint { address, port }) => Some((address, port)),
                                    _ => None,
                                }
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                })
                .collect()
        };
        for chain in &mut chains {
            if !(chain.name.starts_with("cluster-") || chain.name.starts_with("local-")) {
                continue;
            }
            let is_dnat = |r: &Rule| !endpoints_of(r).is_empty();
            // Not a service chain (e.g. `cluster-ips-check`).
            if !chain.rules.iter().any(is_dnat) {
                continue;
            }
            let chain = Arc::make_mut(chain);
            let rules = std::mem::take(&mut chain.rules);
            let (dnat, masquerade): (Vec<Rule>, Vec<Rule>) = rules.into_iter().partition(is_dnat);
            chain.rules = masquerade;
            let mut arms = Vec::new();
            let chosen = dnat.iter().filter(|r| !r.matches.iter().any(|m| matches!(m, Match::InSet { .. })));
            for (address, port) in chosen.flat_map(endpoints_of) {
                let name = format!("endpoint-{endpoint_chains}");
                endpoint_chains += 1;
                let target = match address {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                };
                writeln!(extra, "add chain {family} svcnft {name}").unwrap();
                writeln!(extra, "add rule {family} svcnft {name} {family} saddr {address} jump mark-for-masquerade")
                    .unwrap();
                writeln!(extra, "add rule {family} svcnft {name} meta l4proto tcp dnat to {target}").unwrap();
                arms.push(format!("{} : goto {name}", arms.len()));
            }
            writeln!(
                extra,
                "add rule {family} svcnft {} numgen random mod {} vmap {{ {} }}",
                chain.name,
                arms.len(),
                arms.join(", ")
            )
            .unwrap();
        }
        table.chains = chains;
        table.sets.retain(|s| s.data != Some(MapData::Endpoint));
    }
    format!("{}\n{extra}", render(&plain))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let shape = Shape {
        services: env_usize("SVCNFT_SERVICES", 10_000),
        endpoints_per_service: env_usize("SVCNFT_ENDPOINTS", 10),
        nodes: 50,
        affinity_every: env_usize("SVCNFT_AFFINITY_EVERY", 7),
    };
    let text = policy_text(shape, 0);
    let ruleset = compile(&text);
    let dir = std::env::temp_dir();
    let ours = dir.join(format!("svcnft-bench-{}-ours.nft", std::process::id()));
    std::fs::write(&ours, render(&ruleset)).unwrap();
    println!(
        "cold load of one node's ruleset, {} services x {} endpoints, 50 nodes, affinity every {} \
         (0: none), each into a fresh namespace",
        shape.services, shape.endpoints_per_service, shape.affinity_every
    );
    let (total, apply) = netlink_apply(&text);
    println!(
        "  svcnft apply (netlink, compile included): {:>8.2} s  (of which open + apply {:.2} s)",
        total.as_secs_f64(),
        apply.as_secs_f64()
    );
    println!("  svcnft shape, nft -f:                      {:>8.2} s", nft_load(&ours).as_secs_f64());
    if std::env::var_os("SVCNFT_SKIP_KUBE_PROXY").is_none() {
        let theirs = dir.join(format!("svcnft-bench-{}-kube-proxy.nft", std::process::id()));
        std::fs::write(&theirs, kube_proxy_shape(&ruleset)).unwrap();
        println!("  kube-proxy shape, nft -f:                  {:>8.2} s", nft_load(&theirs).as_secs_f64());
        let _ = std::fs::remove_file(theirs);
    }
    let _ = std::fs::remove_file(ours);
}
