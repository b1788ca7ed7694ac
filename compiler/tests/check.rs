//! The checker against the language's rules: one invalid input per rule (golden
//! diagnostics), the valid examples and their defaults, and robustness.

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use svcnft_compiler::policy::{
    Conditions, LoadBalancerIpMode, NodePortAddresses, Protocol, ServiceType, TargetPort, TrafficDistribution,
    TrafficPolicy,
};
use svcnft_compiler::{check, Checked, SourceFile};

const LAB: &str = include_str!("../../examples/source-ip-lab.svc");
const FULL: &str = include_str!("inputs/full.svc");

fn files(sources: &[(&str, &str)]) -> Vec<SourceFile> {
    sources.iter().map(|(name, text)| SourceFile { name: (*name).to_owned(), text: (*text).to_owned() }).collect()
}

fn valid(text: &str) -> Checked {
    let files = files(&[("policy.svc", text)]);
    match check(&files) {
        Ok(checked) => checked,
        Err(d) => panic!("expected a valid policy:\n{}", d.render(&files)),
    }
}

/// The rendered diagnostics of an invalid policy.
fn invalid(sources: &[(&str, &str)]) -> String {
    let files = files(sources);
    match check(&files) {
        Ok(_) => panic!("expected an invalid policy"),
        Err(d) => d.render(&files),
    }
}

macro_rules! golden {
    ($($name:ident: $text:expr;)*) => {$(
        #[test]
        fn $name() {
            let out = invalid(&[(concat!(stringify!($name), ".svc"), $text)]);
            insta::with_settings!({ snapshot_path => "../../snapshots/diagnostics", prepend_module_to_snapshot => false }, {
                insta::assert_snapshot!(stringify!($name), out);
            });
        }
    )*};
}

const NODES: &str = "node n1 { address 10.0.0.1 }\n";

golden! {
    syntax_unknown_statement: "cluster {\n    masquerade on\n}\n";
    syntax_brace_on_next_line: "node n1\n{ address 10.0.0.1 }\n";
    syntax_port_without_protocol: "service a/b {\n    cluster-ip 10.0.0.1\n    port 80\n}\n";
    syntax_unclosed_block: "node n1 { address 10.0.0.1\n";
    two_cluster_blocks: "cluster { masquerade-all on }\ncluster { masquerade-all off }\n";
    node_without_address: "node n1 { pod-cidr 10.1.0.0/24 }\n";
    duplicate_node: "node n1 { address 10.0.0.1 }\nnode n1 { address 10.0.0.2 }\n";
    invalid_names: "node N1 { address 10.0.0.1; zone -z }\nservice default/web_app { cluster-ip 10.0.0.9; port 80/tcp }\n";
    name_too_long: concat!(
        "service default/", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        " { cluster-ip 10.0.0.9; port 80/tcp }\n");
    cidr_with_host_bits: "cluster {\n    cluster-cidr 10.0.0.1/8 fd00::1/64\n}\n";
    bad_addresses_and_cidrs: "cluster { service-cidr 10.96.0.0 }\nnode n1 { address 10.0.0.1/32 300.1.1.1; pod-cidr 10.1.0.0/33 }\n";
    port_out_of_range: "service a/b {\n    cluster-ip 10.0.0.1\n    port x 0/tcp\n    port y 70000/tcp target 65536\n    port z 8o/tcp\n}\n";
    unknown_protocol: "service a/b { cluster-ip 10.0.0.1; port 80/icmp }\n";
    unknown_keyword_values: "cluster { masquerade-all yes; node-port-addresses primary all }\nservice a/b {\n    type external-name\n    cluster-ip 10.0.0.1\n    port 80/tcp\n    external-traffic-policy global\n    internal-traffic-policy node\n    traffic-distribution prefer-close\n    session-affinity cookie\n    load-balancer-ip 192.0.2.1 direct\n}\n";
    repeated_single_value_statement: "service a/b {\n    type node-port\n    type load-balancer\n    cluster-ip 10.0.0.1\n    port 80/tcp\n}\n";
    port_name_required: "service a/b {\n    cluster-ip 10.0.0.1\n    port 80/tcp\n    port https 443/tcp\n}\n";
    duplicate_port_name: "service a/b {\n    cluster-ip 10.0.0.1\n    port web 80/tcp\n    port web 443/tcp\n}\n";
    duplicate_port_and_protocol: "service a/b {\n    cluster-ip 10.0.0.1\n    port web 80/tcp\n    port alt 80/tcp target 8080\n    port dns 80/udp\n}\n";
    repeated_port_options: "service a/b {\n    type node-port\n    cluster-ip 10.0.0.1\n    port 80/tcp target 1 target 2 node-port 30000 node-port 30001\n}\n";
    node_port_on_cluster_ip_service: "service a/b {\n    cluster-ip 10.0.0.1\n    port 80/tcp node-port 30080\n}\n";
    health_check_node_port_needs_local_load_balancer: "service a/b {\n    type load-balancer\n    cluster-ip 10.0.0.1\n    port 80/tcp node-port 30080\n    health-check-node-port 30081\n}\nservice a/c {\n    type node-port\n    cluster-ip 10.0.0.2\n    port 80/tcp node-port 30082\n    external-traffic-policy local\n    health-check-node-port 30083\n}\n";
    node_port_reused: "service a/b {\n    type node-port\n    cluster-ip 10.0.0.1\n    port web 80/tcp node-port 30080\n    port dns 53/udp node-port 30080\n}\nservice a/c {\n    type load-balancer\n    cluster-ip 10.0.0.2\n    port web 80/tcp node-port 30080\n    port alt 81/tcp node-port 30090\n    external-traffic-policy local\n    health-check-node-port 30090\n}\n";
    node_port_outside_range: "cluster { node-port-range 30000-30100 }\nservice a/b {\n    type load-balancer\n    cluster-ip 10.0.0.1\n    port 80/tcp node-port 32000\n    external-traffic-policy local\n    health-check-node-port 29999\n}\n";
    bad_node_port_range: "cluster {\n    node-port-range 32767-30000\n}\ncluster {\n    node-port-range 30000\n}\n";
    node_port_range_bad_bound: "cluster { node-port-range 0-99999 }\n";
    load_balancer_ip_needs_load_balancer: "service a/b {\n    type node-port\n    cluster-ip 10.0.0.1\n    port 80/tcp\n    external-ip 192.0.2.1\n    load-balancer-ip 198.51.100.1\n}\n";
    session_affinity_timeout_out_of_range: "service a/b { cluster-ip 10.0.0.1; port 80/tcp; session-affinity client-ip timeout 0 }\nservice a/c { cluster-ip 10.0.0.2; port 80/tcp; session-affinity client-ip timeout 25h }\nservice a/d { cluster-ip 10.0.0.3; port 80/tcp; session-affinity client-ip timeout 3d }\nservice a/e { cluster-ip 10.0.0.4; port 80/tcp; session-affinity none timeout 1h }\n";
    no_cluster_ip: "service a/headless {\n    port 80/tcp\n}\n";
    two_cluster_ips_of_one_family: "service a/b {\n    cluster-ip 10.0.0.1 fd00::1\n    cluster-ip 10.0.0.2\n    port 80/tcp\n}\n";
    cluster_ip_outside_service_cidr: "cluster { service-cidr 10.96.0.0/12 fd00:96::/112 }\nservice a/b {\n    cluster-ip 10.0.0.1 fd00:97::1\n    port 80/tcp\n}\n";
    shared_cluster_ip: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nservice a/c { cluster-ip 10.0.0.1; port 80/tcp }\n";
    duplicate_service: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nservice a/b { cluster-ip 10.0.0.2; port 80/tcp }\n";
    endpoints_for_undeclared_service: "endpoints a/missing {\n    endpoint 10.1.0.1\n}\n";
    two_endpoints_blocks: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nendpoints a/b { endpoint 10.1.0.1 }\nendpoints a/b { endpoint 10.1.0.2 }\n";
    duplicate_endpoint_address: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nendpoints a/b {\n    endpoint 10.1.0.1\n    endpoint 10.1.0.1 not-ready\n}\n";
    endpoint_on_undeclared_node: concat!("node n1 { address 10.0.0.1 }\n", "service a/b { cluster-ip 10.0.0.9; port 80/tcp }\nendpoints a/b {\n    endpoint 10.1.0.1 node n1\n    endpoint 10.1.0.2 node n2\n}\n");
    endpoints_port_names_unknown_port: "service a/b {\n    cluster-ip 10.0.0.1\n    port web 80/tcp target http\n    port dns 53/udp\n}\nendpoints a/b {\n    port http 8080\n    port 53\n    port web 8080\n    port web 8081\n}\n";
    endpoints_port_out_of_range: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nendpoints a/b { port 0 }\n";
    bad_endpoint_conditions: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nendpoints a/b {\n    endpoint 10.1.0.1 ready terminating\n    endpoint 10.1.0.2 not-ready not-ready\n    endpoint 10.1.0.3 draining\n    endpoint 10.1.0.4 node n1 node n1 zone a zone b\n    endpoint 10.1.0/24\n}\n";
    bad_hints: "service a/b { cluster-ip 10.0.0.1; port 80/tcp }\nendpoints a/b {\n    endpoint 10.1.0.1 hint-zones Zone-A hint-nodes node_1\n}\n";
    node_port_addresses_mixed: "cluster {\n    node-port-addresses 10.0.0.0/8\n    node-port-addresses all\n}\n";
}

#[test]
fn several_errors_are_all_reported() {
    let text = "cluster { cluster-cidr 10.0.0.1/8 }\n\
                node n1 { pod-cidr 10.1.0.0/24 }\n\
                service a/b {\n    port 0/tcp\n    port 80/tcp node-port 30000\n}\n\
                endpoints a/c { endpoint 10.1.0.1 node n9 }\n";
    let out = invalid(&[("several.svc", text)]);
    assert_eq!(out.matches(": error: ").count(), 7, "{out}");
    insta::with_settings!({ snapshot_path => "../../snapshots/diagnostics", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("several_errors", out);
    });
}

#[test]
fn errors_in_several_files_and_cross_file_rules() {
    let out = invalid(&[
        ("a.svc", "cluster { masquerade-all on }\nservice a/b { cluster-ip 10.0.0.1; port 80/tcp }\n"),
        ("b.svc", "cluster { masquerade-all off }\nservice a/c { cluster-ip 10.0.0.1; port 80/tcp }\n"),
    ]);
    insta::with_settings!({ snapshot_path => "../../snapshots/diagnostics", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("several_files", out);
    });
}

#[test]
fn syntax_errors_are_reported_for_every_file() {
    let out = invalid(&[("a.svc", "node {\n"), ("b.svc", "cluster { }\nfoo\n")]);
    assert!(out.starts_with("a.svc:1:6: error: "), "{out}");
    assert!(out.contains("\nb.svc:2:1: error: "), "{out}");
}

/// "All errors in a policy are reported, not just the first": each broken item
/// reports its syntax error, the items that parse are checked, and nothing is
/// reported missing because its declaration is broken.
#[test]
fn every_error_is_reported_syntax_and_semantic_alike() {
    let out = invalid(&[
        (
            "a.svc",
            "cluster {\n    node-port-range 20000-20999\n    nonsense\n}\n\
             node n1 { address 10.0.0.1; pod-cidr 10.1.0.0/24 }\n\
             service a/web {\n    cluster-ip 10.96.0.1\n    port 80/tcp\n    bogus 1\n}\n\
             endpoints a/web { endpoint 10.1.0.5 node n1 }\n\
             service a/np {\n    type node-port\n    cluster-ip 10.96.0.2\n    port 80/xyz node-port 20080\n}\n",
        ),
        (
            "b.svc",
            "node n2 { address 10.0.0.2 } }\n\
             endpoints a/gone { endpoint 10.1.0.6 node n2 }\n\
             endpoints a/np { endpoint 10.1.0.7 node n3 }\n",
        ),
    ]);
    insta::with_settings!({ snapshot_path => "../../snapshots/diagnostics", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("every_error", out);
    });
}

#[test]
fn named_target_without_endpoint_port_is_a_warning() {
    let files = files(&[(
        "named_target.svc",
        "service a/b {\n    cluster-ip 10.0.0.1\n    port web 80/tcp target http\n    port alt 81/tcp target http\n}\nendpoints a/b { port alt 8081; endpoint 10.1.0.1 }\n",
    )]);
    let checked = check(&files).expect("warnings do not make a policy invalid");
    assert_eq!(checked.warnings.iter().count(), 1);
    assert_eq!(checked.warnings.errors(), 0);
    insta::with_settings!({ snapshot_path => "../../snapshots/diagnostics", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("named_target_warning", checked.warnings.render(&files));
    });
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn port(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("test port")
}

#[test]
fn worked_example_builds_the_lab_policy() {
    let checked = valid(LAB);
    assert!(checked.warnings.is_empty());
    let p = checked.policy;
    assert_eq!(p.cluster.cluster_cidrs, ["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(p.cluster.service_cidrs, ["10.0.0.0/16".parse().unwrap()]);
    assert_eq!(p.cluster.node_port_addresses, NodePortAddresses::Primary);
    assert_eq!(p.cluster.node_port_range, (30000, 32767));
    assert!(!p.cluster.masquerade_all);
    let names: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    assert_eq!(p.nodes[1].addresses, [ip("10.240.0.4")]);
    assert_eq!(p.nodes[1].pod_cidrs, ["10.244.2.0/24".parse().unwrap()]);
    assert_eq!(p.nodes[1].zone, None);

    let [clusterip, nodeport, lb] = p.services.as_slice() else { panic!("three services") };
    assert_eq!(clusterip.name.to_string(), "default/clusterip");
    assert_eq!(clusterip.kind, ServiceType::ClusterIp);
    assert_eq!(clusterip.cluster_ips, [ip("10.0.170.92")]);
    assert_eq!(clusterip.ports.len(), 1);
    let cp = &clusterip.ports[0];
    assert_eq!((cp.name.as_deref(), cp.port, cp.protocol), (None, port(80), Protocol::Tcp));
    assert_eq!(cp.target, Some(TargetPort::Number(port(8080))));
    assert_eq!(cp.node_port, None);
    assert_eq!(clusterip.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(clusterip.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(clusterip.session_affinity, None);
    assert_eq!(clusterip.traffic_distribution, None);
    assert!(!clusterip.externally_accessible());

    assert_eq!(nodeport.kind, ServiceType::NodePort);
    assert_eq!(nodeport.ports[0].node_port, Some(port(30080)));
    assert_eq!(nodeport.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(nodeport.health_check_node_port, None);

    assert_eq!(lb.kind, ServiceType::LoadBalancer);
    assert_eq!(lb.load_balancer_ips.len(), 1);
    assert_eq!(lb.load_balancer_ips[0].address, ip("198.51.100.140"));
    assert_eq!(lb.load_balancer_ips[0].mode, LoadBalancerIpMode::Vip);
    assert_eq!(lb.health_check_node_port, Some(port(32122)));
    assert!(lb.source_ranges.is_empty());

    for s in &p.services {
        let e = s.endpoints.as_ref().expect("every lab service has endpoints");
        assert!(e.ports.is_empty());
        assert_eq!(e.endpoints.len(), 1);
        assert_eq!(e.endpoints[0].address, ip("10.244.1.5"));
        assert_eq!(e.endpoints[0].node.as_deref(), Some("node-1"));
        assert_eq!(e.endpoints[0].conditions, Conditions::READY);
    }
    insta::with_settings!({ snapshot_path => "../../snapshots/policy", prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("source-ip-lab", p);
    });
}

#[test]
fn full_example_reads_every_statement() {
    let p = valid(FULL).policy;
    let c = &p.cluster;
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert_eq!(c.service_cidrs, ["10.96.0.0/12".parse().unwrap()]);
    assert_eq!(c.node_port_addresses, NodePortAddresses::Primary);
    assert_eq!(c.node_port_range, (30000, 32767));
    assert!(!c.masquerade_all);

    let n = p.node("node-1").expect("node-1");
    assert_eq!(n.addresses, [ip("10.240.0.3"), ip("2001:db8::3")]);
    assert_eq!(n.local_addresses, [ip("192.168.1.2")]);
    assert_eq!(n.zone.as_deref(), Some("us-east1-b"));

    let s = &p.services[0];
    assert_eq!(s.kind, ServiceType::LoadBalancer);
    assert_eq!(s.cluster_ips, [ip("10.96.170.92")]);
    assert_eq!(s.ports[0].name.as_deref(), Some("http"));
    assert_eq!(s.ports[0].node_port, Some(port(30080)));
    assert_eq!(s.ports[1].name.as_deref(), Some("metrics"));
    assert_eq!(s.ports[1].target, None);
    assert_eq!(s.external_ips, [ip("192.0.2.10")]);
    let modes: Vec<_> = s.load_balancer_ips.iter().map(|l| l.mode).collect();
    assert_eq!(modes, [LoadBalancerIpMode::Vip, LoadBalancerIpMode::Proxy]);
    assert_eq!(s.source_ranges, ["203.0.113.0/24".parse().unwrap()]);
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(s.health_check_node_port, Some(port(32122)));
    assert_eq!(s.session_affinity, Some(Duration::from_secs(3 * 3600)));
    assert_eq!(s.traffic_distribution, Some(TrafficDistribution::PreferSameZone));

    let e = s.endpoints.as_ref().expect("endpoints");
    assert_eq!(e.ports[0].name.as_deref(), Some("http"));
    assert_eq!(e.ports[0].port, port(8080));
    let conditions: Vec<Conditions> = e.endpoints.iter().map(|e| e.conditions).collect();
    let c = |ready, serving, terminating| Conditions { ready, serving, terminating };
    assert_eq!(
        conditions,
        [
            c(true, true, false),
            c(false, true, true),
            c(false, false, false),
            c(false, false, true),
            c(true, true, false)
        ]
    );
    assert_eq!(e.endpoints[1].zone.as_deref(), Some("us-east1-c"));
    assert_eq!(e.endpoints[4].hint_zones, ["us-east1-b"]);
    assert_eq!(e.endpoints[4].hint_nodes, ["node-2"]);
}

#[test]
fn defaults_and_options() {
    let p = valid(
        "cluster { node-port-addresses 10.0.0.0/8; node-port-addresses fd00::/8; node-port-range 1000-2000; masquerade-all on }\n\
         service a/b { type load-balancer; cluster-ip fd00::1; port 80/tcp node-port 1500; session-affinity client-ip; load-balancer-ip 192.0.2.1 vip }\n\
         service a/c { cluster-ip 10.0.0.1; port 80/tcp; session-affinity client-ip timeout 86400s; traffic-distribution prefer-same-node; internal-traffic-policy local }\n\
         service a/d { cluster-ip 10.0.0.2; port 80/tcp; session-affinity none; external-ip 192.0.2.9 }\n",
    )
    .policy;
    assert_eq!(
        p.cluster.node_port_addresses,
        NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    );
    assert_eq!(p.cluster.node_port_range, (1000, 2000));
    assert!(p.cluster.masquerade_all);
    assert_eq!(p.services[0].session_affinity, Some(Duration::from_secs(10800)));
    assert_eq!(p.services[1].session_affinity, Some(Duration::from_secs(86400)));
    assert_eq!(p.services[1].traffic_distribution, Some(TrafficDistribution::PreferSameNode));
    assert_eq!(p.services[1].internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(p.services[2].session_affinity, None);
    assert!(p.services[2].externally_accessible());
    assert!(p.services[2].endpoints.is_none());
}

#[test]
fn node_ports_of_different_protocols_may_share_a_number() {
    valid("service a/b {\n type node-port\n cluster-ip 10.0.0.1\n port web 80/tcp node-port 30080\n port dns 80/udp node-port 30080\n}\n");
}

#[test]
fn items_may_come_in_any_order_and_from_several_files() {
    let files = files(&[
        ("1.svc", "endpoints a/b { endpoint 10.1.0.1 node n1 }\n"),
        ("2.svc", "service a/b { cluster-ip 10.96.0.1; port 80/tcp }\nnode n1 { address 10.0.0.1 }\n"),
        ("3.svc", "cluster { service-cidr 10.96.0.0/12 }\n"),
    ]);
    let checked = check(&files).expect("valid");
    assert!(checked.policy.services[0].endpoints.is_some());
}

#[test]
fn truncated_and_mangled_inputs_never_panic() {
    for text in [LAB, FULL, NODES] {
        for (end, _) in text.char_indices() {
            let _ = check(&files(&[("t.svc", &text[..end])]));
        }
        for (at, _) in text.char_indices().step_by(7) {
            for insert in ["}", "{", ";", "\n", "/", "#", " x ", "é"] {
                let mangled = format!("{}{insert}{}", &text[..at], &text[at..]);
                if let Err(d) = check(&files(&[("t.svc", &mangled)])) {
                    let _ = d.render(&files(&[("t.svc", &mangled)]));
                }
            }
        }
    }
}
