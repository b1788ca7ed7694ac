//! Applying rulesets to the real kernel, each test in its own network namespaces.
//!
//! The oracle is the kernel's own rendering: whatever the Applier sends must list
//! (`nft list ruleset`) exactly as `nft -f` of our rendered text does in a fresh
//! namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use svcnft_compiler::lower::HAIRPIN_SET_ADDRESSES;
use svcnft_compiler::render::render;
use svcnft_compiler::ruleset::{Rule, Ruleset, Statement, Verdict};
use svcnft_compiler::synthetic::{policy_text, Shape};
use svcnft_compiler::{Policy, SourceFile};
use svcnft_runtime::apply::{Applier, ApplyError, ApplyReport};
use svcnft_runtime::testns::{kernel_tests_enabled, TestNs};

mod common;
use common::examples;

/// Tables of other programs, which svcnft must never touch.
const OTHERS: &str = "table ip other {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport 22 counter accept
	}
}
table inet filter {
	set blocked {
		type ipv4_addr
		elements = { 192.0.2.1 }
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr @blocked drop
	}
}
";

fn ns() -> TestNs {
    TestNs::new().expect("a test namespace")
}

/// `nft list ruleset`, in a canonical order: the kernel lists a table's sets and
/// chains in the order they were created, and hash sets' elements in its own order,
/// neither of which means anything. The order of tables and rules is kept.
fn listing(ns: &TestNs) -> String {
    canonical_listing(&raw_listing(ns))
}

fn raw_listing(ns: &TestNs) -> String {
    ns.nft(&["list", "ruleset"], None).expect("nft list ruleset")
}

fn canonical_listing(text: &str) -> String {
    let mut out = String::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut block = String::new();
    // An `elements = { … }` list, gathered over its lines.
    let mut elements: Option<String> = None;
    for line in text.lines() {
        if elements.is_none() && line.trim_start().starts_with("elements = {") {
            elements = Some(String::new());
        }
        if let Some(list) = &mut elements {
            list.push_str(line.trim());
            if line.ends_with('}') {
                let inner = list.trim_start_matches("elements = {").trim_end_matches('}');
                let mut items: Vec<&str> = inner.split(',').map(str::trim).collect();
                items.sort();
                block.push_str(&format!("\t\telements = {{ {} }}\n", items.join(", ")));
                elements = None;
            }
            continue;
        }
        match line {
            "}" => {
                blocks.push(std::mem::take(&mut block));
                blocks.sort();
                out.push_str(&blocks.concat());
                blocks.clear();
                out.push_str("}\n");
            }
            "" => blocks.push(std::mem::take(&mut block)),
            l if l.starts_with("table ") => out.push_str(&format!("{l}\n")),
            l => block.push_str(&format!("{l}\n")),
        }
    }
    out
}

/// An Applier bound to `ns` (its socket stays in the namespace it was opened in).
fn open(ns: &TestNs) -> Applier {
    ns.run(Applier::open).expect("enter the namespace").expect("open nf_tables")
}

/// What the kernel lists after `nft -f` of our rendering in a fresh namespace.
fn oracle(ruleset: &Ruleset) -> String {
    let ns = ns();
    ns.nft(&["-f", "-"], Some(&render(ruleset))).expect("nft -f loads our rendering");
    listing(&ns)
}

/// The ruleset with its sets, chains and elements in one order: the kernel reads
/// them back in its own, and their order means nothing (that of rules does).
fn canonical(ruleset: &Ruleset) -> Ruleset {
    let mut ruleset = ruleset.clone();
    for table in &mut ruleset.tables {
        table.sets.sort_by(|a, b| a.name.cmp(&b.name));
        table.chains.sort_by(|a, b| a.name.cmp(&b.name));
        for set in &mut table.sets {
            std::sync::Arc::make_mut(set).elements.sort();
        }
    }
    ruleset
}

/// One example policy by its file stem.
fn example(name: &str) -> Policy {
    examples().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no example {name}")).1
}

fn compile(policy: &Policy, node: &str) -> Ruleset {
    svcnft_compiler::compile(policy, node).expect("declared node").1
}

fn check(text: &str) -> Policy {
    let files = [SourceFile { name: "generated.svc".into(), text: text.into() }];
    match svcnft_compiler::check(&files) {
        Ok(checked) => checked.policy,
        Err(d) => panic!("{}\n{text}", d.render(&files)),
    }
}

#[test]
fn every_example_and_node_lists_as_nft_loads_it_and_reapplies_as_a_no_op() {
    if !kernel_tests_enabled() {
        return;
    }
    for (example, policy) in examples() {
        for node in &policy.nodes {
            let what = format!("{example}@{}", node.name);
            let desired = compile(&policy, &node.name);
            let ns = ns();
            let mut applier = open(&ns);
            let report = applier.apply(desired.clone()).expect("apply");
            assert!(report.operations > 0, "{what}");
            assert_eq!(listing(&ns), oracle(&desired), "{what}: the kernel lists something else");
            assert_eq!(applier.apply(desired.clone()).unwrap().operations, 0, "{what}: re-apply sent something");
            let mut adopted = open(&ns);
            assert_eq!(
                canonical(adopted.committed()),
                canonical(&desired),
                "{what}: read-back differs from the desired ruleset"
            );
            assert_eq!(adopted.apply(desired.clone()).unwrap().operations, 0, "{what}: re-apply after adopting");
            adopted.reread().unwrap();
            assert_eq!(canonical(adopted.committed()), canonical(&desired), "{what}: reread");
        }
    }
}

#[test]
fn applying_a_then_b_equals_b_fresh() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = "node-1";
    let rulesets: Vec<(String, Ruleset)> = examples()
        .into_iter()
        .filter(|(_, p)| p.nodes.iter().any(|n| n.name == node))
        .map(|(name, policy)| (name, compile(&policy, node)))
        .collect();
    assert!(rulesets.len() >= 9);
    let fresh: BTreeMap<&str, String> = rulesets.iter().map(|(name, r)| (name.as_str(), oracle(r))).collect();
    for (a, first) in &rulesets {
        let ns = ns();
        let mut applier = open(&ns);
        for (b, second) in &rulesets {
            applier.apply(first.clone()).unwrap_or_else(|e| panic!("{a}: {e}"));
            applier.apply(second.clone()).unwrap_or_else(|e| panic!("{a} then {b}: {e}"));
            assert_eq!(listing(&ns), fresh[b.as_str()], "{a} then {b}");
            applier.reread().unwrap();
            assert_eq!(canonical(applier.committed()), canonical(second), "{a} then {b}: read-back");
        }
    }
}

/// `desired` with one more rule that jumps to a chain that does not exist.
fn with_dangling_jump(desired: &Ruleset) -> Ruleset {
    let mut broken = desired.clone();
    let chain = std::sync::Arc::make_mut(broken.tables[0].chains.last_mut().expect("a chain"));
    chain.rules.push(Rule::new(vec![], vec![Statement::Verdict(Verdict::Jump("no-such-chain".into()))]));
    broken
}

#[test]
fn a_rejected_batch_changes_nothing_and_names_the_operation() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = example("source-ip-lab");
    let other = example("session-affinity");
    let ns = ns();
    ns.nft(&["-f", "-"], Some(OTHERS)).unwrap();
    let mut applier = open(&ns);
    let before = compile(&lab, "node-1");
    applier.apply(before.clone()).unwrap();
    let listed = raw_listing(&ns);
    for (what, desired) in [
        ("a jump to a missing chain", with_dangling_jump(&before)),
        ("a jump to a missing chain among many changes", with_dangling_jump(&compile(&other, "node-1"))),
    ] {
        match applier.apply(desired.clone()) {
            Err(ApplyError::Rejected { op, .. }) => assert!(op.contains("rule"), "{what}: names {op}"),
            other => panic!("{what}: expected a rejection, got {other:?}"),
        }
        assert_eq!(raw_listing(&ns), listed, "{what}: the kernel changed");
        assert_eq!(applier.committed(), &before, "{what}: the applier forgot what is committed");
    }
    let message = applier.apply(with_dangling_jump(&before)).unwrap_err().to_string();
    assert!(message.contains("add rule ip svcnft") && message.contains("jump no-such-chain"), "{message}");
    assert_eq!(applier.apply(before.clone()).unwrap().operations, 0);
}

#[test]
fn a_generation_race_is_retried_and_ends_correct() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = example("source-ip-lab");
    let desired = compile(&lab, "node-1");
    let ns = ns();
    let mut applier = open(&ns);
    ns.nft(&["add", "table", "ip", "other"], None).unwrap();
    ns.nft(&["add", "chain", "ip", "other", "c"], None).unwrap();
    let report = applier.apply(desired.clone()).unwrap();
    assert!(report.retries >= 1, "{report:?}");
    assert_eq!(listing(&ns), canonical_listing("table ip other {\n\tchain c {\n\t}\n}\n") + &oracle(&desired));
    // A later change, raced again, still ends correct.
    let other = example("dual-stack");
    let next = compile(&other, "node-1");
    ns.nft(&["add", "rule", "ip", "other", "c", "counter"], None).unwrap();
    assert!(applier.apply(next.clone()).unwrap().retries >= 1);
    applier.reread().unwrap();
    assert_eq!(canonical(applier.committed()), canonical(&next));
    assert!(ns.nft(&["list", "table", "ip", "other"], None).unwrap().contains("counter"));
}

fn svcnft(ns: &TestNs, args: &[&str]) -> Output {
    ns.exec(env!("CARGO_BIN_EXE_svcnft"), args).expect("svcnft runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.svc"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The listing of a ruleset with our tables removed (`nft` lists tables in
/// creation order, each a block ending with a closing brace at column 0).
fn without_ours(listing: &str) -> String {
    let mut out = String::new();
    let mut ours = false;
    for line in listing.lines() {
        if line.starts_with("table ") {
            ours = line.contains(" svcnft ");
        }
        if !ours {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn tables_of_others_are_never_touched_by_apply_or_cleanup() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = ns();
    ns.nft(&["-f", "-"], Some(OTHERS)).unwrap();
    let theirs = raw_listing(&ns);
    for example in ["source-ip-lab", "dual-stack", "session-affinity"] {
        let out = svcnft(&ns, &["apply", path_str(&example_path(example)), "--node", "node-1"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let listed = raw_listing(&ns);
        assert!(listed.contains("table ip svcnft"), "{listed}");
        assert_eq!(without_ours(&listed), theirs, "after applying {example}");
    }
    let out = svcnft(&ns, &["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(raw_listing(&ns), theirs);
    let out = svcnft(&ns, &["cleanup"]);
    assert_eq!(stdout(&out), "no changes\n");
    assert_eq!(raw_listing(&ns), theirs);
}

#[test]
fn the_apply_command_reports_dry_runs_and_refuses() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = ns();
    let lab = example_path("source-ip-lab");
    let lab = path_str(&lab);

    let out = svcnft(&ns, &["apply", lab, "--node", "node-1", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).lines().count() > 1 && stdout(&out).contains("add table"), "{}", stdout(&out));
    assert_eq!(listing(&ns), "", "--dry-run sent something");

    let out = svcnft(&ns, &["apply", lab, "--node", "node-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    let words: Vec<&str> = line.trim_end().split(' ').collect();
    assert!(
        line.ends_with('\n')
            && line.lines().count() == 1
            && matches!(words.as_slice(), ["applied", n, "operations", "in", t, "ms"]
                if n.parse::<usize>().is_ok_and(|n| n > 0) && t.parse::<u64>().is_ok()),
        "{line:?}"
    );
    let applied = listing(&ns);
    assert_eq!(applied, oracle(&compile(&example("source-ip-lab"), "node-1")));

    let out = svcnft(&ns, &["apply", lab, "--node", "node-1"]);
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), "no changes\n".into()));
    let out = svcnft(&ns, &["apply", lab, "--node", "node-1", "--dry-run"]);
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), "no changes\n".into()));

    let invalid = std::env::temp_dir().join(format!("svcnft-invalid-{}.svc", std::process::id()));
    std::fs::write(&invalid, "service default/broken {\n    cluster-ip 10.96.0.300\n}\n").unwrap();
    let out = svcnft(&ns, &["apply", path_str(&invalid), "--node", "node-1"]);
    std::fs::remove_file(&invalid).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("error"), "{}", stderr(&out));
    let out = svcnft(&ns, &["apply", lab, "--node", "node-9"]);
    assert_eq!(out.status.code(), Some(2), "unknown node: {}", stderr(&out));
    assert_eq!(listing(&ns), applied, "an invalid policy reached the kernel");

    let out = ns
        .exec("setpriv", &["--inh-caps=-all", "--bounding-set=-net_admin", env!("CARGO_BIN_EXE_svcnft"), "cleanup"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("CAP_NET_ADMIN"), "{}", stderr(&out));
    assert_eq!(listing(&ns), applied);
}

/// A service with session affinity whose timeout is `TIMEOUT` seconds.
const AFFINITY: &str = "cluster {
    cluster-cidr 10.244.0.0/16
    service-cidr 10.96.0.0/16
}
node node-1 { address 10.240.0.3; pod-cidr 10.244.1.0/24 }
service default/a {
    cluster-ip 10.96.0.10
    port 80/tcp
    session-affinity client-ip timeout TIMEOUTs
}
endpoints default/a {
    endpoint 10.244.1.5 node node-1
    endpoint 10.244.1.6 node node-1
}
";

#[test]
fn a_changed_affinity_timeout_recreates_the_sets_under_unchanged_rules() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = ns();
    let mut applier = open(&ns);
    let [first, second] = ["100", "200"].map(|t| compile(&check(&AFFINITY.replace("TIMEOUT", t)), "node-1"));
    applier.apply(first).unwrap();
    // The kernel refuses to delete a set that rules still name.
    applier.apply(second.clone()).unwrap();
    assert_eq!(listing(&ns), oracle(&second));
}

/// How long each client entry of the affinity sets has left to live, from the
/// kernel's listing (`… timeout 1m40s expires 1m39s998ms`).
fn affinity_expiries(ns: &TestNs) -> Vec<Duration> {
    let listing = raw_listing(ns);
    listing
        .split("expires ")
        .skip(1)
        .map(|rest| {
            let text = rest.split([' ', ',', '\n', '}']).next().unwrap_or_default();
            humantime::parse_duration(text).unwrap_or_else(|e| panic!("{text}: {e}\n{listing}"))
        })
        .collect()
}

#[test]
fn a_returning_client_refreshes_its_affinity_entry() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = ns();
    // The node's own connections to the cluster IP go out through a veth pair
    // whose other end answers nothing: the first packet passes the nat output
    // hook, where the affinity rules are, and the connection then times out.
    for args in [
        "link add svc0 type veth peer name svc1",
        "link set svc0 up",
        "link set svc1 up",
        "addr add 10.240.0.3/24 dev svc0",
        "route add 10.96.0.0/16 dev svc0",
        "route add 10.244.0.0/16 dev svc0",
    ] {
        let out = ns.exec("ip", &args.split(' ').collect::<Vec<_>>()).unwrap();
        assert!(out.status.success(), "ip {args}: {}", stderr(&out));
    }
    let mut applier = open(&ns);
    applier.apply(compile(&check(&AFFINITY.replace("TIMEOUT", "100")), "node-1")).unwrap();
    let connect = || {
        let service = "10.96.0.10:80".parse().unwrap();
        ns.run(move || std::net::TcpStream::connect_timeout(&service, Duration::from_millis(100))).unwrap()
    };
    assert!(connect().is_err(), "nothing answers behind the veth pair");
    let first = affinity_expiries(&ns);
    assert!(first.len() == 1 && first[0] <= Duration::from_secs(100), "{first:?}");
    std::thread::sleep(Duration::from_secs(2));
    // The same client again: its entry is found, and must count from now.
    assert!(connect().is_err());
    let refreshed = affinity_expiries(&ns);
    assert_eq!(refreshed.len(), 1, "the client stays with its endpoint: {refreshed:?}");
    assert!(refreshed[0] > Duration::from_secs(99), "not refreshed: {refreshed:?} after {first:?}");
}

/// A base chain whose priority changes (as when an upgrade moves a check) is
/// deleted and created again in the one batch, with its rules.
#[test]
fn a_base_chain_moved_to_another_priority_is_recreated() {
    if !kernel_tests_enabled() {
        return;
    }
    let desired = compile(&example("source-ip-lab"), "node-1");
    let mut earlier = desired.clone();
    for table in &mut earlier.tables {
        for chain in &mut table.chains {
            if chain.name == "filter-input" {
                let mut moved = (**chain).clone();
                moved.hook.as_mut().expect("a base chain").priority = -110;
                *chain = std::sync::Arc::new(moved);
            }
        }
    }
    assert_ne!(oracle(&earlier), oracle(&desired));
    let ns = ns();
    let mut applier = open(&ns);
    applier.apply(earlier).unwrap();
    let report = applier.apply(desired.clone()).unwrap();
    assert!(report.operations > 0);
    assert_eq!(listing(&ns), oracle(&desired));
    applier.reread().unwrap();
    assert!(applier.plan(&desired).is_empty(), "the kernel holds the new layout");
}

#[test]
fn one_endpoint_change_is_a_handful_of_messages() {
    if !kernel_tests_enabled() {
        return;
    }
    let shape = Shape { services: 1_000, ..Shape::LARGE };
    let [before, after] = [0, 1].map(|revision| compile(&check(&policy_text(shape, revision)), "node-0"));
    let ns = ns();
    let mut applier = open(&ns);
    applier.apply(before.clone()).unwrap();
    let report: ApplyReport = applier.apply(after.clone()).unwrap();
    assert!(report.operations > 0 && report.messages <= 10, "{report:?}");
    applier.reread().unwrap();
    assert_eq!(canonical(applier.committed()), canonical(&after));
}

#[test]
fn prefixes_of_any_length_list_as_nft_loads_them() {
    if !kernel_tests_enabled() {
        return;
    }
    let policy = check(
        "cluster {\n    cluster-cidr 10.128.0.0/9 fd00:244::/49\n    service-cidr 10.96.0.0/12 fd00:96::/108\n}\n\
         node node-1 { address 10.240.0.3 fd00:240::3; pod-cidr 10.128.1.0/24 fd00:244:1::/64 }\n\
         service default/web {\n    cluster-ip 10.96.0.10 fd00:96::10\n    port 80/tcp target 8080\n}\n\
         endpoints default/web {\n    endpoint 10.128.1.5 node node-1\n    endpoint fd00:244:1::5 node node-1\n}\n",
    );
    let desired = compile(&policy, "node-1");
    let ns = ns();
    let mut applier = open(&ns);
    applier.apply(desired.clone()).unwrap();
    assert_eq!(listing(&ns), oracle(&desired));
    applier.reread().unwrap();
    assert_eq!(canonical(applier.committed()), canonical(&desired), "read-back");
}

#[test]
fn partitioned_hairpin_sets_list_as_nft_loads_them_and_read_back() {
    if !kernel_tests_enabled() {
        return;
    }
    let services = HAIRPIN_SET_ADDRESSES / 10 + 10;
    let shape = |services| Shape { services, endpoints_per_service: 10, nodes: 50, affinity_every: 0 };
    let [many, few] = [services, services - 20].map(|s| compile(&check(&policy_text(shape(s), 0)), "node-0"));
    assert!(many.tables[0].set("hairpin-1").is_some() && few.tables[0].set("hairpin").is_some());
    let ns = ns();
    let mut applier = open(&ns);
    // Into several sets, back into one, and into several again.
    for desired in [&many, &few, &many] {
        applier.apply(desired.clone()).unwrap();
        let (listed, loaded) = (listing(&ns), oracle(desired));
        let first = listed.lines().zip(loaded.lines()).find(|(a, b)| a != b);
        assert!(listed == loaded, "the kernel lists something else, first: {first:?}");
        applier.reread().unwrap();
        assert_eq!(canonical(applier.committed()), canonical(desired), "read-back");
        assert_eq!(applier.apply(desired.clone()).unwrap().operations, 0, "re-apply after reading back");
    }
}

/// Random policies over one small cluster, for the property test.
mod generated {
    use std::fmt::Write;

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    pub struct Service {
        kind: u8,
        ports: Vec<(u16, u8, Option<u16>)>,
        external_ip: bool,
        source_ranges: bool,
        etp_local: bool,
        itp_local: bool,
        affinity: Option<u32>,
        distribution: bool,
        endpoints: Vec<(u8, u8, u8)>,
    }

    fn service() -> impl Strategy<Value = Service> {
        (
            0..3u8,
            prop::collection::vec(
                (prop::sample::select(vec![53u16, 80, 443, 8080]), 0..3u8, prop::option::of(8000..8003u16)),
                1..3,
            ),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(1..4000u32),
            any::<bool>(),
            prop::collection::vec((0..4u8, 0..4u8, 1..6u8), 0..4),
        )
            .prop_map(
                |(kind, ports, external_ip, source_ranges, etp_local, itp_local, affinity, distribution, endpoints)| {
                    Service {
                        kind,
                        ports,
                        external_ip,
                        source_ranges,
                        etp_local,
                        itp_local,
                        affinity,
                        distribution,
                        endpoints,
                    }
                },
            )
    }

    /// Policy text: 0–4 services of every type over three nodes (and endpoints on
    /// no node), ports of every protocol, conditions, traffic policies, affinity,
    /// source ranges and external IPs.
    pub fn policy() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(service(), 0..5)).prop_map(|(masquerade_all, services)| {
            let mut out = String::from("cluster {\n    cluster-cidr 10.244.0.0/16\n    service-cidr 10.96.0.0/16\n");
            if masquerade_all {
                out.push_str("    masquerade-all on\n");
            }
            out.push_str("}\n");
            for n in 1..=3 {
                writeln!(out, "node node-{n} {{ address 10.240.0.{}; pod-cidr 10.244.{n}.0/24 }}", n + 2).unwrap();
            }
            for (i, s) in services.iter().enumerate() {
                write_service(&mut out, i, s);
            }
            out
        })
    }

    fn write_service(out: &mut String, i: usize, s: &Service) {
        let kind = ["cluster-ip", "node-port", "load-balancer"][s.kind as usize];
        writeln!(out, "service default/svc-{i} {{\n    type {kind}\n    cluster-ip 10.96.0.{}", 10 + i).unwrap();
        let mut seen = Vec::new();
        for (j, (port, proto, target)) in s.ports.iter().enumerate() {
            let proto = ["tcp", "udp", "sctp"][*proto as usize];
            if seen.contains(&(port, proto)) {
                continue;
            }
            seen.push((port, proto));
            write!(out, "    port p{j} {port}/{proto}").unwrap();
            if let Some(target) = target {
                write!(out, " target {target}").unwrap();
            }
            if s.kind > 0 {
                write!(out, " node-port {}", 30000 + i * 4 + j).unwrap();
            }
            out.push('\n');
        }
        if s.external_ip {
            writeln!(out, "    external-ip 192.0.2.{}", 10 + i).unwrap();
        }
        if s.kind == 2 {
            writeln!(out, "    load-balancer-ip 198.51.100.{}", 10 + i).unwrap();
            if s.source_ranges {
                out.push_str("    source-ranges 203.0.113.0/24 10.240.0.0/24\n");
            }
        }
        if s.etp_local && s.kind > 0 {
            out.push_str("    external-traffic-policy local\n");
            if s.kind == 2 {
                writeln!(out, "    health-check-node-port {}", 32000 + i).unwrap();
            }
        }
        if s.itp_local {
            out.push_str("    internal-traffic-policy local\n");
        }
        if let Some(timeout) = s.affinity {
            writeln!(out, "    session-affinity client-ip timeout {timeout}s").unwrap();
        }
        if s.distribution {
            out.push_str("    traffic-distribution prefer-same-node\n");
        }
        writeln!(out, "}}\nendpoints default/svc-{i} {{").unwrap();
        let mut addresses = Vec::new();
        for (node, condition, host) in &s.endpoints {
            let address = format!("10.244.{}.{}", node.max(&1), 10 * i + *host as usize);
            if addresses.contains(&address) {
                continue;
            }
            let node = if *node == 0 { String::new() } else { format!(" node node-{node}") };
            let condition = ["", " not-ready", " terminating", " terminating not-serving"][*condition as usize];
            writeln!(out, "    endpoint {address}{node}{condition}").unwrap();
            addresses.push(address);
        }
        out.push_str("}\n");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

    #[test]
    fn applying_random_a_then_b_equals_b_fresh(a in generated::policy(), b in generated::policy()) {
        if !kernel_tests_enabled() {
            return Ok(());
        }
        let [first, second] = [&a, &b].map(|text| compile(&check(text), "node-1"));
        let ns = ns();
        let mut applier = open(&ns);
        applier.apply(first.clone()).unwrap();
        applier.apply(second.clone()).unwrap();
        proptest::prop_assert_eq!(listing(&ns), oracle(&second), "A:\n{}\nB:\n{}", a, b);
        applier.reread().unwrap();
        proptest::prop_assert_eq!(canonical(applier.committed()), canonical(&second));
        proptest::prop_assert_eq!(applier.apply(second.clone()).unwrap().operations, 0);
    }

    /// The agent's path: policies lowered by one remembering `Lowering`, whose
    /// unchanged chains and sets the diff skips as shared, applied in a row.
    #[test]
    fn remembered_lowerings_applied_in_a_row_match_nft(texts in proptest::collection::vec(generated::policy(), 3..6)) {
        if !kernel_tests_enabled() {
            return Ok(());
        }
        let ns = ns();
        let mut applier = open(&ns);
        let mut lowering = svcnft_compiler::lower::Lowering::default();
        for (i, text) in texts.iter().enumerate() {
            let plan = svcnft_compiler::plan(&check(text), "node-1").unwrap();
            let desired = lowering.lower(&plan);
            applier.apply(desired.clone()).unwrap_or_else(|e| panic!("step {i}: {e}\n{text}"));
            proptest::prop_assert_eq!(listing(&ns), oracle(&desired), "step {}:\n{}", i, text);
        }
    }
}
