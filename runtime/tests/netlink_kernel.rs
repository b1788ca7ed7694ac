//! The netlink layer against the real kernel, each test in its own network
//! namespace, with `nft` rendering as the oracle.

use std::time::Duration;

use svcnft_runtime::netlink::*;
use svcnft_runtime::testns::{kernel_tests_enabled, TestNs};

const IP_NFT: &str = r#"table ip svc {
	set aff {
		type ipv4_addr
		flags dynamic,timeout
		timeout 3h
	}
	set cidrs {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 192.168.1.0/24 }
	}
	map svc-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "cluster IPs"
		elements = { 10.96.0.10 . tcp . 53 : goto svc-dns, 10.96.0.1 . udp . 443 comment "api" : goto svc-dns }
	}
	map ep-addr {
		type ipv4_addr : ipv4_addr . inet_service
		elements = { 10.96.0.20 : 10.1.1.2 . 8443 }
	}
	set marks {
		type mark
		elements = { 0x00004000, 0x00000001 }
	}
	chain nat-prerouting {
		type nat hook prerouting priority -100; policy accept;
		jump services
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}
	chain filter-input {
		type filter hook input priority -110; policy accept;
		ct state new ct status dnat counter
		ip saddr @cidrs reject
		ip saddr != @cidrs meta l4proto tcp reject with tcp reset
	}
	chain nat-postrouting {
		type nat hook postrouting priority 100; policy accept;
		jump masquerading
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @svc-ips comment "dispatch"
		fib daddr type local jump nodeports
	}
	chain nodeports {
		meta mark 0x1 return
	}
	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}
	chain masquerading {
		meta mark & 0x00004000 == 0x00000000 return
		meta mark set meta mark ^ 0x00004000
		masquerade fully-random
	}
	chain svc-dns {
		ip saddr != 10.244.0.0/16 jump mark-for-masquerade
		numgen random mod 3 == 0 goto ep1
		numgen random mod 2 offset 1 == 2 goto ep1
		drop
	}
	chain ep1 {
		update @aff { ip saddr }
		meta l4proto tcp dnat to 10.1.1.1:8080
		accept
	}
	chain ep2 {
		meta mark @marks meta l4proto tcp dnat ip to ip daddr map @ep-addr
		ct mark 0x2 update @aff { ip saddr timeout 1h }
	}
}"#;

const IP6_NFT: &str = r#"table ip6 svc6 {
	map svc-ips {
		type ipv6_addr . inet_proto . inet_service : verdict
		elements = { fd00::10 . tcp . 53 : goto ep1 }
	}
	set aff {
		type ipv6_addr
		flags dynamic,timeout
		timeout 3h
	}
	chain nat-prerouting {
		type nat hook prerouting priority -100; policy accept;
		ip6 daddr . meta l4proto . th dport vmap @svc-ips
		ip6 saddr != fd00:10:244::/48 jump ep1
		reject
	}
	chain nat-postrouting {
		type nat hook postrouting priority 100; policy accept;
		masquerade
	}
	chain ep1 {
		update @aff { ip6 saddr }
		meta l4proto tcp dnat to [fd00::1]:8080
	}
}"#;

const R0: Reg = Reg::r32(0);

/// Chains, sets with their elements, and rules of one table.
type Objects = (Vec<Chain>, Vec<(Set, Vec<Element>)>, Vec<Rule>);

fn base(kind: ChainType, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain { kind, hook, priority, policy: Policy::Accept })
}

fn chain(name: &str, base: Option<BaseChain>) -> Chain {
    Chain { name: name.into(), base }
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Rule {
    Rule { chain: chain.into(), handle: None, exprs, comment: None }
}

fn verdict(v: Verdict) -> Expr {
    Expr::Immediate { dreg: Reg::VERDICT, data: Data::Verdict(v) }
}

fn jump(c: &str) -> Expr {
    verdict(Verdict::Jump(c.into()))
}

fn goto(c: &str) -> Expr {
    verdict(Verdict::Goto(c.into()))
}

fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    Expr::Cmp { sreg: R0, op, data: data.into() }
}

fn meta(key: MetaKey) -> Expr {
    Expr::Meta { dreg: R0, key }
}

fn payload(base: PayloadBase, offset: u32, len: u32, dreg: Reg) -> Expr {
    Expr::Payload { dreg, base, offset, len }
}

fn mark_bits(mask: u32, xor: u32) -> Expr {
    Expr::Bitwise {
        sreg: R0,
        dreg: R0,
        mask: mask.to_ne_bytes().as_slice().into(),
        xor: xor.to_ne_bytes().as_slice().into(),
    }
}

/// `meta mark set (meta mark & mask) ^ xor`.
fn set_mark(mask: u32, xor: u32) -> Vec<Expr> {
    vec![meta(MetaKey::Mark), mark_bits(mask, xor), Expr::MetaSet { key: MetaKey::Mark, sreg: R0 }]
}

/// `update @aff { <key> }`.
fn update_aff(key: Expr) -> Vec<Expr> {
    vec![key, Expr::Dynset { op: DynsetOp::Update, set: "aff".into(), sreg_key: R0, sreg_data: None, timeout: None }]
}

fn ct_bit(key: CtKey, bit: u32) -> Vec<Expr> {
    vec![Expr::Ct { dreg: R0, key }, mark_bits(bit, 0), cmp(CmpOp::Neq, &0u32.to_ne_bytes())]
}

fn numgen(modulus: u32, offset: u32, value: u32, target: &str) -> Vec<Expr> {
    vec![Expr::Numgen { dreg: R0, random: true, modulus, offset }, cmp(CmpOp::Eq, &value.to_ne_bytes()), goto(target)]
}

fn dnat(family: Family, addr: &[u8], port: u16) -> Vec<Expr> {
    let port_reg = Reg::r32(addr.len() as u32 / 4);
    vec![
        meta(MetaKey::L4Proto),
        cmp(CmpOp::Eq, &[6]),
        Expr::Immediate { dreg: R0, data: Data::Value(addr.into()) },
        Expr::Immediate { dreg: port_reg, data: Data::Value(port.to_be_bytes().as_slice().into()) },
        Expr::Nat { kind: NatKind::Dnat, family, addr: Some(R0), port: Some(port_reg), flags: 0 },
    ]
}

/// `daddr . meta l4proto . th dport vmap @svc-ips`.
fn dispatch(daddr_offset: u32, addr_len: u32) -> Vec<Expr> {
    let proto = Reg::r32(addr_len / 4);
    let port = Reg::r32(addr_len / 4 + 1);
    vec![
        payload(PayloadBase::Network, daddr_offset, addr_len, R0),
        Expr::Meta { dreg: proto, key: MetaKey::L4Proto },
        payload(PayloadBase::Transport, 2, 2, port),
        Expr::Lookup { set: "svc-ips".into(), sreg: R0, dreg: Some(Reg::VERDICT), invert: false },
    ]
}

fn aff_set(key: KeyType) -> Set {
    Set {
        name: "aff".into(),
        key: vec![key],
        data: None,
        flags: SetFlags { dynamic: true, timeout: true, ..SetFlags::default() },
        size: Some(65535),
        timeout: Some(Duration::from_secs(3 * 3600)),
        typeof_description: None,
        comment: None,
    }
}

fn plain_set(name: &str, key: KeyType) -> Set {
    Set {
        name: name.into(),
        key: vec![key],
        data: None,
        flags: SetFlags::default(),
        size: None,
        timeout: None,
        typeof_description: None,
        comment: None,
    }
}

fn svc_map(addr: KeyType, comment: Option<&str>) -> Set {
    Set {
        name: "svc-ips".into(),
        key: vec![addr, KeyType::InetProto, KeyType::InetService],
        data: Some(SetData::Verdict),
        flags: SetFlags::default(),
        size: None,
        timeout: None,
        typeof_description: None,
        comment: comment.map(Into::into),
    }
}

fn svc_elem(addr: &[u8], proto: u8, port: u16, target: &str) -> Element {
    Element::with_data(concat(&[addr, &[proto], &port.to_be_bytes()]), Data::Verdict(Verdict::Goto(target.into())))
}

fn interval(key: [u8; 4], end: bool) -> Element {
    Element { interval_end: end, ..Element::new(key.to_vec()) }
}

/// The kernel objects of `IP_NFT`, written the way nft encodes them.
fn ip_objects() -> Objects {
    let chains = vec![
        chain("nat-prerouting", base(ChainType::Nat, Hook::Prerouting, -100)),
        chain("nat-output", base(ChainType::Nat, Hook::Output, -100)),
        chain("filter-input", base(ChainType::Filter, Hook::Input, -110)),
        chain("nat-postrouting", base(ChainType::Nat, Hook::Postrouting, 100)),
        chain("services", None),
        chain("nodeports", None),
        chain("mark-for-masquerade", None),
        chain("masquerading", None),
        chain("svc-dns", None),
        chain("ep1", None),
        chain("ep2", None),
    ];
    let cidrs =
        Set { flags: SetFlags { interval: true, ..SetFlags::default() }, ..plain_set("cidrs", KeyType::Ipv4Addr) };
    let api = Element { comment: Some("api".into()), ..svc_elem(&[10, 96, 0, 1], 17, 443, "svc-dns") };
    let sets = vec![
        (aff_set(KeyType::Ipv4Addr), vec![]),
        (
            cidrs,
            vec![
                interval([0, 0, 0, 0], true),
                interval([10, 0, 0, 0], false),
                interval([11, 0, 0, 0], true),
                interval([192, 168, 1, 0], false),
                interval([192, 168, 2, 0], true),
            ],
        ),
        (svc_map(KeyType::Ipv4Addr, Some("cluster IPs")), vec![svc_elem(&[10, 96, 0, 10], 6, 53, "svc-dns"), api]),
        (
            Set {
                name: "ep-addr".into(),
                key: vec![KeyType::Ipv4Addr],
                data: Some(SetData::Value(vec![KeyType::Ipv4Addr, KeyType::InetService])),
                ..plain_set("ep-addr", KeyType::Ipv4Addr)
            },
            vec![Element::with_data(
                vec![10, 96, 0, 20],
                Data::Value(concat(&[&[10, 1, 1, 2], &8443u16.to_be_bytes()])),
            )],
        ),
        (
            plain_set("marks", KeyType::Mark),
            vec![Element::new(0x4000u32.to_ne_bytes().to_vec()), Element::new(1u32.to_ne_bytes().to_vec())],
        ),
    ];
    let saddr = || payload(PayloadBase::Network, 12, 4, R0);
    let cidrs_lookup = |invert| Expr::Lookup { set: "cidrs".into(), sreg: R0, dreg: None, invert };
    let mut ct = ct_bit(CtKey::State, 8);
    ct.extend(ct_bit(CtKey::Status, 0x20));
    ct.push(Expr::Counter);
    let mut rules = vec![
        rule("nat-prerouting", vec![jump("services")]),
        rule("nat-output", vec![jump("services")]),
        rule("filter-input", ct),
        rule("filter-input", vec![saddr(), cidrs_lookup(false), Expr::Reject(RejectKind::IcmpUnreach(3))]),
        rule(
            "filter-input",
            vec![
                saddr(),
                cidrs_lookup(true),
                meta(MetaKey::L4Proto),
                cmp(CmpOp::Eq, &[6]),
                Expr::Reject(RejectKind::TcpReset),
            ],
        ),
        rule("nat-postrouting", vec![jump("masquerading")]),
        Rule { comment: Some("dispatch".into()), ..rule("services", dispatch(16, 4)) },
        rule(
            "services",
            vec![
                Expr::Fib { dreg: R0, result: FibResult::AddrType, flags: fib_flags::DADDR },
                cmp(CmpOp::Eq, &2u32.to_ne_bytes()),
                jump("nodeports"),
            ],
        ),
        rule("nodeports", vec![meta(MetaKey::Mark), cmp(CmpOp::Eq, &1u32.to_ne_bytes()), verdict(Verdict::Return)]),
        rule("mark-for-masquerade", set_mark(!0x4000, 0x4000)),
        rule(
            "masquerading",
            vec![
                meta(MetaKey::Mark),
                mark_bits(0x4000, 0),
                cmp(CmpOp::Eq, &0u32.to_ne_bytes()),
                verdict(Verdict::Return),
            ],
        ),
        rule("masquerading", set_mark(!0, 0x4000)),
        rule("masquerading", vec![Expr::Masq { flags: nat_flags::PROTO_RANDOM_FULLY }]),
        rule(
            "svc-dns",
            vec![payload(PayloadBase::Network, 12, 2, R0), cmp(CmpOp::Neq, &[10, 244]), jump("mark-for-masquerade")],
        ),
        rule("svc-dns", numgen(3, 0, 0, "ep1")),
        rule("svc-dns", numgen(2, 1, 2, "ep1")),
        rule("svc-dns", vec![verdict(Verdict::Drop)]),
        rule("ep1", update_aff(saddr())),
        rule("ep1", dnat(Family::Ip, &[10, 1, 1, 1], 8080)),
        rule("ep1", vec![verdict(Verdict::Accept)]),
        rule(
            "ep2",
            vec![
                meta(MetaKey::Mark),
                Expr::Lookup { set: "marks".into(), sreg: R0, dreg: None, invert: false },
                meta(MetaKey::L4Proto),
                cmp(CmpOp::Eq, &[6]),
                payload(PayloadBase::Network, 16, 4, R0),
                Expr::Lookup { set: "ep-addr".into(), sreg: R0, dreg: Some(R0), invert: false },
                Expr::Nat {
                    kind: NatKind::Dnat,
                    family: Family::Ip,
                    addr: Some(R0),
                    port: Some(Reg::r32(1)),
                    flags: 0,
                },
            ],
        ),
        rule(
            "ep2",
            vec![
                Expr::Ct { dreg: R0, key: CtKey::Mark },
                cmp(CmpOp::Eq, &2u32.to_ne_bytes()),
                saddr(),
                Expr::Dynset {
                    op: DynsetOp::Update,
                    set: "aff".into(),
                    sreg_key: R0,
                    sreg_data: None,
                    timeout: Some(Duration::from_secs(3600)),
                },
            ],
        ),
    ];
    rules.retain(|r| !r.exprs.is_empty());
    (chains, sets, rules)
}

fn ip6_objects() -> Objects {
    let fd00 = |last: u8| {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = last;
        a
    };
    let chains = vec![
        chain("nat-prerouting", base(ChainType::Nat, Hook::Prerouting, -100)),
        chain("nat-postrouting", base(ChainType::Nat, Hook::Postrouting, 100)),
        chain("ep1", None),
    ];
    let sets = vec![
        (svc_map(KeyType::Ipv6Addr, None), vec![svc_elem(&fd00(0x10), 6, 53, "ep1")]),
        (aff_set(KeyType::Ipv6Addr), vec![]),
    ];
    let rules = vec![
        rule("nat-prerouting", dispatch(24, 16)),
        rule(
            "nat-prerouting",
            vec![
                payload(PayloadBase::Network, 8, 6, R0),
                cmp(CmpOp::Neq, &[0xfd, 0, 0, 0x10, 0x02, 0x44]),
                jump("ep1"),
            ],
        ),
        rule("nat-prerouting", vec![Expr::Reject(RejectKind::IcmpUnreach(4))]),
        rule("nat-postrouting", vec![Expr::Masq { flags: 0 }]),
        rule("ep1", update_aff(payload(PayloadBase::Network, 8, 16, R0))),
        rule("ep1", dnat(Family::Ip6, &fd00(1), 8080)),
    ];
    (chains, sets, rules)
}

fn build(family: Family, table: &str, (chains, sets, rules): &Objects) -> Batch {
    let mut b = Batch::new(family, table);
    b.add_table();
    for (s, _) in sets {
        b.add_set(s);
    }
    for c in chains {
        b.add_chain(c);
    }
    for (s, elems) in sets {
        b.add_elements(&s.name, elems);
    }
    for r in rules {
        b.add_rule(r);
    }
    b
}

fn family_word(f: Family) -> &'static str {
    match f {
        Family::Ip => "ip",
        Family::Ip6 => "ip6",
    }
}

/// Commits our batch in one namespace and the nft text in another, and
/// compares the kernel's rendering of both.
fn check_against_nft(family: Family, table: &str, objects: &Objects, text: &str) {
    if !kernel_tests_enabled() {
        return;
    }
    let ours = TestNs::new().unwrap();
    let theirs = TestNs::new().unwrap();
    ours.run(|| {
        let mut conn = Conn::open().unwrap();
        let g = conn.generation().unwrap();
        conn.commit(&build(family, table, objects), Some(g)).unwrap();
    })
    .unwrap();
    theirs.nft(&["-f", "-"], Some(text)).unwrap();
    let list = |ns: &TestNs| ns.nft(&["list", "table", family_word(family), table], None).unwrap();
    assert_eq!(list(&ours), list(&theirs));
}

/// Runs `f` with a connection in a fresh namespace, if the kernel tests can run.
fn with_conn(f: impl FnOnce(&mut Conn) + Send) {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = TestNs::new().unwrap();
    ns.run(|| f(&mut Conn::open().unwrap())).unwrap();
}

#[test]
fn ip_ruleset_renders_like_nft() {
    check_against_nft(Family::Ip, "svc", &ip_objects(), IP_NFT);
}

#[test]
fn ip6_ruleset_renders_like_nft() {
    check_against_nft(Family::Ip6, "svc6", &ip6_objects(), IP6_NFT);
}

fn sorted(mut v: Vec<Element>) -> Vec<Element> {
    v.sort();
    v
}

fn assert_round_trip(state: &TableState, (chains, sets, rules): &Objects) {
    assert_eq!(&state.chains, chains);
    let mut got_sets = state.sets.clone();
    got_sets.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut want_sets = sets.clone();
    want_sets.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for ((gs, ge), (ws, we)) in got_sets.into_iter().zip(want_sets) {
        assert_eq!(gs, ws);
        assert_eq!(sorted(ge), sorted(we), "elements of {}", ws.name);
    }
    assert_eq!(state.sets.len(), sets.len());
    let got: Vec<Rule> = state
        .rules
        .iter()
        .map(|r| {
            assert!(r.handle.is_some());
            Rule { handle: None, ..r.clone() }
        })
        .collect();
    let mut want = rules.clone();
    want.sort_by_key(|r| chains.iter().position(|c| c.name == r.chain));
    assert_eq!(got, want);
}

#[test]
fn read_back_round_trips() {
    if !kernel_tests_enabled() {
        return;
    }
    for (family, table, objects) in [(Family::Ip, "svc", ip_objects()), (Family::Ip6, "svc6", ip6_objects())] {
        let ns = TestNs::new().unwrap();
        ns.run(|| {
            let mut conn = Conn::open().unwrap();
            assert_eq!(conn.read_table(family, table).unwrap(), None);
            conn.commit(&build(family, table, &objects), None).unwrap();
            // Rules in one dump of the table, chain by chain, and the default.
            for whole in [Some(true), Some(false), None] {
                conn.set_whole_table_rules(whole);
                let state = conn.read_table(family, table).unwrap().unwrap();
                assert_eq!(state.generation, conn.generation().unwrap());
                assert_round_trip(&state, &objects);
            }
        })
        .unwrap();
    }
}

#[test]
fn rejected_batch_changes_nothing() {
    with_conn(|conn| {
        conn.commit(&build(Family::Ip, "svc", &ip_objects()), None).unwrap();
        let before = conn.read_table(Family::Ip, "svc").unwrap().unwrap();
        let mut bad = Batch::new(Family::Ip, "svc");
        bad.add_chain(&chain("extra", None))
            .delete_elements("svc-ips", &[svc_elem(&[10, 96, 0, 10], 6, 53, "svc-dns")])
            .add_rule(&rule("extra", vec![jump("no-such-chain")]));
        match conn.commit(&bad, Some(before.generation)) {
            Err(Error::Rejected { index, op, source }) => {
                assert_eq!(index, 2, "{op}: {source}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a rejected batch, got {other:?}"),
        }
        let after = conn.read_table(Family::Ip, "svc").unwrap().unwrap();
        assert_eq!(after.chains, before.chains);
        assert_eq!(after.sets, before.sets);
        assert_eq!(after.rules, before.rules);
    });
}

#[test]
fn stale_generation_is_refused() {
    with_conn(|conn| {
        let stale = conn.generation().unwrap();
        let mut first = Batch::new(Family::Ip, "race");
        first.add_table();
        conn.commit(&first, Some(stale)).unwrap();
        let mut second = Batch::new(Family::Ip, "race");
        second.add_chain(&chain("c", None));
        assert!(matches!(conn.commit(&second, Some(stale)), Err(Error::GenerationChanged)));
        let state = conn.read_table(Family::Ip, "race").unwrap().unwrap();
        assert!(state.chains.is_empty());
        conn.commit(&second, Some(state.generation)).unwrap();
    });
}

/// 10k rules over 10k elements go out in one batch and come back whole.
#[test]
fn ten_thousand_rules() {
    with_conn(|conn| {
        let mut b = Batch::new(Family::Ip, "big");
        b.add_table().add_chain(&chain("svc", None)).add_set(&svc_map(KeyType::Ipv4Addr, None));
        let elems: Vec<Element> =
            (0..10_000u32).map(|i| svc_elem(&(0x0a60_0000 + i).to_be_bytes(), 6, 80, "svc")).collect();
        b.add_elements("svc-ips", &elems);
        for i in 0..10_000u32 {
            let mut exprs = vec![payload(PayloadBase::Network, 16, 4, R0)];
            exprs.push(cmp(CmpOp::Eq, &(0x0a60_0000 + i).to_be_bytes()));
            exprs.extend(dnat(Family::Ip, &[10, 1, 1, 1], 8080));
            b.add_rule(&rule("svc", exprs));
        }
        conn.commit(&b, None).unwrap();
        let state = conn.read_table(Family::Ip, "big").unwrap().unwrap();
        assert_eq!(state.rules.len(), 10_000);
        assert_eq!(state.sets[0].1.len(), 10_000);
    });
}

#[test]
fn incremental_operations_by_handle() {
    with_conn(|conn| {
        let objects = ip_objects();
        conn.commit(&build(Family::Ip, "svc", &objects), None).unwrap();
        let state = conn.read_table(Family::Ip, "svc").unwrap().unwrap();
        let in_chain =
            |s: &TableState, c: &str| -> Vec<Rule> { s.rules.iter().filter(|r| r.chain == c).cloned().collect() };
        let dns = in_chain(&state, "svc-dns");
        let replacement = rule("svc-dns", numgen(5, 0, 4, "ep2"));
        let mut b = Batch::new(Family::Ip, "svc");
        b.replace_rule(dns[1].handle.unwrap(), &replacement)
            .delete_rule("svc-dns", dns[2].handle.unwrap())
            .flush_chain("masquerading")
            .delete_elements("svc-ips", &objects.1[2].1[..1])
            .delete_rule("ep2", in_chain(&state, "ep2")[0].handle.unwrap())
            .delete_set("marks")
            .add_elements("svc-ips", &[svc_elem(&[10, 96, 0, 11], 6, 80, "ep1")]);
        conn.commit(&b, Some(state.generation)).unwrap();

        let after = conn.read_table(Family::Ip, "svc").unwrap().unwrap();
        let dns_after = in_chain(&after, "svc-dns");
        assert_eq!(dns_after.len(), 3);
        assert_eq!(dns_after[1].handle, dns[1].handle);
        assert_eq!(dns_after[1].exprs, replacement.exprs);
        assert_eq!(dns_after[2], dns[3]);
        assert!(in_chain(&after, "masquerading").is_empty());
        assert!(after.sets.iter().all(|(s, _)| s.name != "marks"));
        let svc_ips = &after.sets.iter().find(|(s, _)| s.name == "svc-ips").unwrap().1;
        let mut keys: Vec<&[u8]> = svc_ips.iter().map(|e| &e.key[..4]).collect();
        keys.sort();
        assert_eq!(keys, [&[10, 96, 0, 1][..], &[10, 96, 0, 11]]);

        let mut b = Batch::new(Family::Ip, "svc");
        b.delete_table();
        conn.commit(&b, None).unwrap();
        assert_eq!(conn.read_table(Family::Ip, "svc").unwrap(), None);
    });
}

/// Clears CAP_NET_ADMIN from the calling thread's effective set.
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the
    // kernel ABI requires; capset with pid 0 affects only this thread.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()), 0);
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()), 0);
    }
}

#[test]
fn missing_net_admin_is_reported() {
    with_conn(|conn| {
        drop_net_admin();
        let mut b = Batch::new(Family::Ip, "denied");
        b.add_table();
        assert!(matches!(conn.commit(&b, None), Err(Error::PermissionDenied)));
    });
}

#[test]
fn element_timeouts_and_comments_round_trip() {
    with_conn(|conn| {
        let timed = Element {
            timeout: Some(Duration::from_secs(3600)),
            comment: Some("client".into()),
            ..Element::new(vec![10, 0, 0, 1])
        };
        let default = Element::new(vec![10, 0, 0, 2]);
        let mut b = Batch::new(Family::Ip, "t");
        b.add_table().add_set(&aff_set(KeyType::Ipv4Addr)).add_elements("aff", &[timed.clone(), default.clone()]);
        conn.commit(&b, None).unwrap();
        let state = conn.read_table(Family::Ip, "t").unwrap().unwrap();
        assert_eq!(state.sets[0].0, aff_set(KeyType::Ipv4Addr));
        assert_eq!(sorted(state.sets[0].1.clone()), vec![timed, default]);
    });
}

/// Right after a bulk insert the kernel grows the set's hash table in the
/// background, and a dump resumed across the resize repeats some elements and
/// skips as many; read-back must notice and read the set again.
#[test]
fn set_dumps_right_after_a_bulk_insert_are_complete() {
    with_conn(|conn| {
        for round in 0..12u32 {
            let elems: Vec<Element> =
                (0..6000 + round * 1000).map(|i| svc_elem(&(0x0a60_0000 + i).to_be_bytes(), 17, 53, "c")).collect();
            let mut b = Batch::new(Family::Ip, "big");
            b.add_table()
                .add_chain(&chain("c", None))
                .add_set(&svc_map(KeyType::Ipv4Addr, None))
                .add_elements("svc-ips", &elems);
            conn.commit(&b, None).unwrap();
            let state = conn.read_table(Family::Ip, "big").unwrap().unwrap();
            assert_eq!(sorted(state.sets[0].1.clone()), sorted(elems), "round {round}");
            let mut b = Batch::new(Family::Ip, "big");
            b.delete_table();
            conn.commit(&b, None).unwrap();
        }
    });
}
