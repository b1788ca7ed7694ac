//! Node planning: every endpoint-selection rule and every no-endpoint verdict.

use std::net::IpAddr;

use svcnft_compiler::diagnostics::SourceFile;
use svcnft_compiler::plan::{
    plan, EndpointSet, ExternalChain, ExternalRoute, NodePlan, NodePortScope, PortPlan, Refusal, Route,
};
use svcnft_compiler::policy::Family;

const NODES: &str = "
cluster { cluster-cidr 10.244.0.0/16; service-cidr 10.96.0.0/16 }
node node-1 { address 10.240.0.3; pod-cidr 10.244.1.0/24; zone zone-a }
node node-2 { address 10.240.0.4; pod-cidr 10.244.2.0/24; zone zone-b }
node node-3 { address 10.240.0.5; local-address 192.168.1.5; pod-cidr 10.244.3.0/24; zone zone-b }
";

fn plan_for(policy: &str, node: &str) -> NodePlan {
    let files = [SourceFile { name: "test.svc".into(), text: format!("{NODES}\n{policy}") }];
    let checked = match svcnft_compiler::check::check(&files) {
        Ok(c) => c,
        Err(d) => panic!("invalid test policy:\n{}", d.render(&files)),
    };
    plan(&checked.policy, node).expect("the node exists")
}

/// The plan of the only port of the only service, IPv4.
fn port(policy: &str, node: &str) -> PortPlan {
    let plan = plan_for(policy, node);
    let family = plan.families.iter().find(|f| f.family == Family::Ipv4).expect("an IPv4 table");
    assert_eq!(family.ports.len(), 1, "one service port expected");
    PortPlan::clone(&family.ports[0])
}

fn addrs(targets: &[svcnft_compiler::plan::Target]) -> Vec<String> {
    targets.iter().map(|t| t.socket_addr().to_string()).collect()
}

const WEB: &str = "service default/web { cluster-ip 10.96.0.10; port 80/tcp target 8080 }";

#[test]
fn ready_endpoints_only_not_ready_and_terminating_are_left_out() {
    let p = port(
        &format!(
            "{WEB}
            endpoints default/web {{
                endpoint 10.244.1.5 node node-1
                endpoint 10.244.2.5 node node-2 not-ready
                endpoint 10.244.2.6 node node-2 terminating
                endpoint 10.244.3.5 node node-3
            }}"
        ),
        "node-1",
    );
    assert_eq!(addrs(&p.cluster_endpoints), ["10.244.1.5:8080", "10.244.3.5:8080"]);
    assert_eq!(p.internal, Route::To(EndpointSet::Cluster));
    assert_eq!(p.external, None);
    assert!(p.local_endpoints.is_empty());
}

#[test]
fn terminating_serving_endpoints_are_the_fallback_when_none_is_ready() {
    let p = port(
        &format!(
            "{WEB}
            endpoints default/web {{
                endpoint 10.244.2.5 node node-2 not-ready
                endpoint 10.244.2.6 node node-2 terminating
                endpoint 10.244.3.6 node node-3 terminating not-serving
            }}"
        ),
        "node-1",
    );
    assert_eq!(addrs(&p.cluster_endpoints), ["10.244.2.6:8080"]);
    assert_eq!(p.internal, Route::To(EndpointSet::Cluster));
}

#[test]
fn unusable_endpoints_only_means_reject() {
    let p = port(
        &format!(
            "{WEB}
            endpoints default/web {{
                endpoint 10.244.2.5 node node-2 not-ready
                endpoint 10.244.3.6 node node-3 terminating not-serving
            }}"
        ),
        "node-1",
    );
    assert!(p.cluster_endpoints.is_empty());
    assert_eq!(p.internal, Route::Refuse(Refusal::Reject));
    assert_eq!(p.all_endpoint_addresses.len(), 2, "hairpin still covers every endpoint address");
}

#[test]
fn no_endpoints_block_rejects_internal_and_external_traffic() {
    let p = port("service default/np { type node-port; cluster-ip 10.96.0.11; port 80/tcp node-port 30080 }", "node-1");
    assert_eq!(p.internal, Route::Refuse(Refusal::Reject));
    assert_eq!(p.external, Some(ExternalRoute::Reject));
}

const LOCAL_NP: &str = "service default/np {
    type node-port
    cluster-ip 10.96.0.12
    port 80/tcp target 8080 node-port 30080
    external-traffic-policy local
}";

#[test]
fn external_local_with_a_local_endpoint_keeps_the_client_and_short_circuits_pods_and_node() {
    let policy = format!(
        "{LOCAL_NP}
        endpoints default/np {{ endpoint 10.244.1.5 node node-1; endpoint 10.244.2.5 node node-2 }}"
    );
    let p = port(&policy, "node-1");
    assert_eq!(addrs(&p.local_endpoints), ["10.244.1.5:8080"]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.244.1.5:8080", "10.244.2.5:8080"]);
    assert_eq!(
        p.external,
        Some(ExternalRoute::Chain(ExternalChain {
            masquerade: false,
            short_circuit: true,
            target: Some(EndpointSet::Local),
            refuse: None,
        }))
    );
    assert_eq!(p.internal, Route::To(EndpointSet::Cluster));
}

#[test]
fn external_local_without_a_local_endpoint_drops_external_clients_only() {
    let policy = format!("{LOCAL_NP}\nendpoints default/np {{ endpoint 10.244.2.5 node node-2 }}");
    let p = port(&policy, "node-1");
    assert!(p.local_endpoints.is_empty());
    assert_eq!(
        p.external,
        Some(ExternalRoute::Chain(ExternalChain {
            masquerade: false,
            short_circuit: true,
            target: None,
            refuse: Some(Refusal::Drop),
        }))
    );
    assert_eq!(p.internal, Route::To(EndpointSet::Cluster), "the cluster IP still works");
}

#[test]
fn external_cluster_policy_masquerades_everything() {
    let policy = "service default/np { type node-port; cluster-ip 10.96.0.12; port 80/tcp node-port 30080 }
        endpoints default/np { endpoint 10.244.2.5 node node-2 }";
    let p = port(policy, "node-1");
    assert_eq!(
        p.external,
        Some(ExternalRoute::Chain(ExternalChain {
            masquerade: true,
            short_circuit: false,
            target: Some(EndpointSet::Cluster),
            refuse: None,
        }))
    );
    assert_eq!(p.node_port.map(|n| n.get()), Some(30080));
}

#[test]
fn local_set_falls_back_to_local_terminating_even_with_ready_endpoints_elsewhere() {
    let policy = format!(
        "{LOCAL_NP}
        endpoints default/np {{
            endpoint 10.244.1.5 node node-1 terminating
            endpoint 10.244.1.6 node node-1 terminating not-serving
            endpoint 10.244.2.5 node node-2
        }}"
    );
    let p = port(&policy, "node-1");
    assert_eq!(addrs(&p.local_endpoints), ["10.244.1.5:8080"]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.244.2.5:8080"]);
}

#[test]
fn internal_local_without_local_endpoints_drops_cluster_ip_traffic() {
    let policy = "service default/web { cluster-ip 10.96.0.10; port 80/tcp; internal-traffic-policy local }
        endpoints default/web { endpoint 10.244.2.5 node node-2 }";
    assert_eq!(port(policy, "node-1").internal, Route::Refuse(Refusal::Drop));
    let on_node_2 = port(policy, "node-2");
    assert_eq!(on_node_2.internal, Route::To(EndpointSet::Local));
    assert_eq!(addrs(&on_node_2.local_endpoints), ["10.244.2.5:80"]);
    assert!(on_node_2.cluster_endpoints.is_empty(), "internal local alone uses no cluster-wide set");
}

/// kube-proxy's `UsesClusterEndpoints`: "Even if the external traffic policy is
/// Local, we need Cluster endpoints to implement short circuiting."
#[test]
fn both_policies_local_still_short_circuit_pods_and_the_node_to_every_endpoint() {
    let policy = format!(
        "{}\nendpoints default/np {{ endpoint 10.244.1.5 node node-1; endpoint 10.244.2.5 node node-2 }}",
        LOCAL_NP
            .replace("external-traffic-policy local", "external-traffic-policy local\ninternal-traffic-policy local")
    );
    for node in ["node-1", "node-3"] {
        let p = port(&policy, node);
        assert_eq!(addrs(&p.cluster_endpoints), ["10.244.1.5:8080", "10.244.2.5:8080"], "{node}");
        match p.external {
            Some(ExternalRoute::Chain(chain)) => assert!(chain.short_circuit, "{node}"),
            other => panic!("expected an external chain, got {other:?}"),
        }
    }
    assert_eq!(port(&policy, "node-1").internal, Route::To(EndpointSet::Local));
    assert_eq!(port(&policy, "node-3").internal, Route::Refuse(Refusal::Drop));
}

#[test]
fn zone_hints_are_used_when_every_ready_endpoint_has_one_and_one_names_this_zone() {
    let policy = format!(
        "{WEB}
        endpoints default/web {{
            endpoint 10.244.1.5 node node-1 hint-zones zone-a
            endpoint 10.244.2.5 node node-2 hint-zones zone-b
            endpoint 10.244.3.5 node node-3 hint-zones zone-b
            endpoint 10.244.3.6 node node-3 not-ready
        }}"
    );
    assert_eq!(addrs(&port(&policy, "node-1").cluster_endpoints), ["10.244.1.5:8080"]);
    assert_eq!(addrs(&port(&policy, "node-2").cluster_endpoints), ["10.244.2.5:8080", "10.244.3.5:8080"]);
}

#[test]
fn zone_hints_are_ignored_when_one_ready_endpoint_lacks_them_or_none_names_this_zone() {
    let missing = format!(
        "{WEB}
        endpoints default/web {{
            endpoint 10.244.1.5 node node-1 hint-zones zone-a
            endpoint 10.244.2.5 node node-2
        }}"
    );
    assert_eq!(port(&missing, "node-1").cluster_endpoints.len(), 2);
    let elsewhere = format!(
        "{WEB}
        endpoints default/web {{
            endpoint 10.244.2.5 node node-2 hint-zones zone-b
            endpoint 10.244.3.5 node node-3 hint-zones zone-b
        }}"
    );
    assert_eq!(port(&elsewhere, "node-1").cluster_endpoints.len(), 2);
}

#[test]
fn node_hints_win_over_zone_hints() {
    let policy = format!(
        "{WEB}
        endpoints default/web {{
            endpoint 10.244.2.5 node node-2 hint-zones zone-b hint-nodes node-2
            endpoint 10.244.3.5 node node-3 hint-zones zone-b hint-nodes node-3
        }}"
    );
    assert_eq!(addrs(&port(&policy, "node-3").cluster_endpoints), ["10.244.3.5:8080"]);
}

#[test]
fn traffic_distribution_derives_hints_from_endpoint_zones_and_nodes() {
    let eps = "endpoints default/web {
            endpoint 10.244.1.5 node node-1
            endpoint 10.244.2.5 node node-2
            endpoint 10.244.3.5 node node-3
        }";
    let zone = format!("{}\n{eps}", WEB.replace("target 8080", "target 8080; traffic-distribution prefer-same-zone"));
    assert_eq!(addrs(&port(&zone, "node-2").cluster_endpoints), ["10.244.2.5:8080", "10.244.3.5:8080"]);
    let node = format!("{}\n{eps}", WEB.replace("target 8080", "target 8080; traffic-distribution prefer-same-node"));
    assert_eq!(addrs(&port(&node, "node-2").cluster_endpoints), ["10.244.2.5:8080"]);
}

#[test]
fn dnat_port_comes_from_endpoints_then_numeric_target_then_the_port() {
    let policy = "service default/multi {
            cluster-ip 10.96.0.20
            port http 80/tcp target web
            port metrics 9090/tcp target 9100
            port dns 53/udp
        }
        endpoints default/multi { port http 8080; endpoint 10.244.2.5 node node-2 }";
    let plan = plan_for(policy, "node-1");
    let ports = &plan.families[0].ports;
    let by_port = |p: u16| ports.iter().find(|x| x.id.port == p).expect("planned");
    assert_eq!(addrs(&by_port(80).cluster_endpoints), ["10.244.2.5:8080"]);
    assert_eq!(addrs(&by_port(9090).cluster_endpoints), ["10.244.2.5:9100"]);
    assert_eq!(addrs(&by_port(53).cluster_endpoints), ["10.244.2.5:53"]);
}

#[test]
fn unresolved_named_target_gets_no_endpoints() {
    let policy = "service default/named { cluster-ip 10.96.0.21; port 80/tcp target web }
        endpoints default/named { endpoint 10.244.2.5 node node-2 }";
    let p = port(policy, "node-1");
    assert!(p.cluster_endpoints.is_empty());
    assert_eq!(p.internal, Route::Refuse(Refusal::Reject));
}

#[test]
fn node_port_addresses_primary_cidrs_and_all() {
    let svc = "service default/np { type node-port; cluster-ip 10.96.0.12; port 80/tcp node-port 30080 }";
    let scope = |cluster: &str| {
        let text = format!("{}\n{svc}", NODES.replace("cluster {", &format!("cluster {{ {cluster};")));
        let files = [SourceFile { name: "t.svc".into(), text }];
        let checked = svcnft_compiler::check::check(&files).unwrap_or_else(|d| panic!("{}", d.render(&files)));
        plan(&checked.policy, "node-3").unwrap().families[0].node_ports_on.clone()
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(scope("node-port-addresses primary"), NodePortScope::Addresses(vec![ip("10.240.0.5")]));
    assert_eq!(scope("node-port-addresses 192.168.0.0/16"), NodePortScope::Addresses(vec![ip("192.168.1.5")]));
    assert_eq!(
        scope("node-port-addresses 10.0.0.0/8 192.168.0.0/16"),
        NodePortScope::Addresses(vec![ip("10.240.0.5"), ip("192.168.1.5")])
    );
    assert_eq!(scope("node-port-addresses all"), NodePortScope::AllLocal);
}

#[test]
fn source_ranges_allow_load_balancer_ips_when_a_node_address_is_inside() {
    let svc = |range: &str| {
        format!(
            "service default/lb {{
                type load-balancer
                cluster-ip 10.96.0.30
                load-balancer-ip 198.51.100.140
                load-balancer-ip 198.51.100.141 proxy
                port 80/tcp node-port 30081
                source-ranges {range}
            }}
            endpoints default/lb {{ endpoint 10.244.2.5 node node-2 }}"
        )
    };
    let outside = port(&svc("203.0.113.0/24"), "node-1");
    assert!(!outside.allow_from_lb_ips);
    assert_eq!(
        outside.load_balancer_ips,
        vec!["198.51.100.140".parse::<IpAddr>().unwrap()],
        "proxy mode is not programmed"
    );
    assert!(port(&svc("203.0.113.0/24 10.240.0.0/24"), "node-1").allow_from_lb_ips);
}

#[test]
fn dual_stack_services_are_planned_per_family_with_endpoints_of_that_family() {
    let policy = "service default/dual { cluster-ip 10.96.0.40 fd00:96::40; port 80/tcp }
        endpoints default/dual { endpoint 10.244.2.5 node node-2; endpoint fd00:244:2::5 node node-2 }";
    let plan = plan_for(policy, "node-1");
    assert_eq!(plan.families.len(), 2);
    let v6 = plan.families.iter().find(|f| f.family == Family::Ipv6).unwrap();
    assert_eq!(addrs(&v6.ports[0].cluster_endpoints), ["[fd00:244:2::5]:80"]);
    assert_eq!(v6.ports[0].cluster_ip, "fd00:96::40".parse::<IpAddr>().unwrap());
}

#[test]
fn health_checks_count_ready_local_endpoints() {
    let policy = "service default/lb {
            type load-balancer
            cluster-ip 10.96.0.30
            port 80/tcp node-port 30081
            external-traffic-policy local
            health-check-node-port 32122
        }
        endpoints default/lb {
            endpoint 10.244.1.5 node node-1
            endpoint 10.244.1.6 node node-1 terminating
            endpoint 10.244.2.5 node node-2 terminating
        }";
    let checks = |node: &str| plan_for(policy, node).health_checks;
    assert_eq!(checks("node-1")[0].local_endpoints, 1);
    assert_eq!(checks("node-1")[0].port.get(), 32122);
    assert_eq!(checks("node-2")[0].local_endpoints, 0, "terminating-only is unhealthy");
    assert_eq!(checks("node-3")[0].local_endpoints, 0);
}

#[test]
fn unknown_node_is_an_error_naming_the_known_ones() {
    let files = [SourceFile { name: "t.svc".into(), text: NODES.to_string() }];
    let checked = svcnft_compiler::check::check(&files).unwrap();
    let err = plan(&checked.policy, "node-9").unwrap_err().to_string();
    assert!(err.contains("node-9") && err.contains("node-1"), "{err}");
}

/// The agent plans every edit with one `Planning`, which keeps the plans of the
/// services an edit left alone: its plans equal fresh ones, health checks
/// included, across endpoint edits, a node change and a switch of node.
#[test]
fn remembered_plans_equal_fresh_ones() {
    use svcnft_compiler::check::Incremental;
    use svcnft_compiler::plan::Planning;

    let lab = include_str!("../../examples/source-ip-lab.svc");
    let lb = "endpoints default/loadbalancer { endpoint 10.244.1.5 node node-1 }";
    let versions = [
        lab.to_owned(),
        lab.replace(lb, "endpoints default/loadbalancer { endpoint 10.244.2.5 node node-2 }"),
        lab.replace(
            lb,
            "endpoints default/loadbalancer { endpoint 10.244.1.5 node node-1; endpoint 10.244.1.6 node node-1 }",
        ),
        lab.replace(lb, "endpoints default/loadbalancer { endpoint 10.244.1.5 node node-1 terminating }"),
        lab.replace("node node-2 {", "node node-2 { zone z;"),
        lab.to_owned(),
    ];
    let (mut incremental, mut planning) = (Incremental::default(), Planning::default());
    let mut health_checks = Vec::new();
    for (step, text) in versions.iter().enumerate() {
        assert!(text != lab || step == 0 || step == versions.len() - 1, "step {step} edits the lab");
        let files = [SourceFile { name: "lab.svc".into(), text: text.clone() }];
        let policy = incremental.check(&files).expect("valid").policy;
        for node in ["node-1", "node-1", "node-2"] {
            let fresh = plan(&policy, node).expect("the node exists");
            assert_eq!(planning.plan(&policy, node).expect("the node exists"), fresh, "step {step}, {node}");
            health_checks.push(fresh.health_checks.iter().map(|h| h.local_endpoints).collect::<Vec<_>>());
        }
    }
    assert!(health_checks.iter().any(|h| h.contains(&2)) && health_checks.iter().any(|h| h.contains(&0)));
}
