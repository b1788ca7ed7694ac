//! The source-IP tutorial, step by step, on svcnft's own rules: each node gets its rules
//! from one policy through the runtime, and the echo pods report the addresses the
//! tutorial shows. Needs root and `ip`/`nft`; skips otherwise, except under `CI=true`.

use std::net::IpAddr;
use std::time::Duration;

use svcnft_compiler::{diff, Ruleset};
use svcnft_lab::http::{Outcome, Target};
use svcnft_lab::lab::{compile, CLIENT4, CLIENT6, HEALTH_CHECK_PORT, LB_VIP4};
use svcnft_lab::Lab;

mod common;
use common::{policy, seen, start};

/// Long enough for an answer on a busy machine, short enough to wait out a drop.
const DROP_WAIT: Duration = Duration::from_millis(700);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// How a request from `ns` to `url` ends.
fn outcome(lab: &Lab, ns: &str, url: &str) -> Outcome {
    lab.probe_from(ns, &Target::parse(url).unwrap(), DROP_WAIT).unwrap()
}

/// The echo pod's `(hostname, client_address)` for a request from `ns` to `url`.
fn answer(lab: &Lab, ns: &str, url: &str) -> (String, String) {
    let target = Target::parse(url).unwrap();
    let response = match lab.probe_from(ns, &target, Duration::from_secs(3)).unwrap() {
        Outcome::Answered(response) => response,
        other => panic!("{url} from {ns}: {other:?}"),
    };
    let value = |key| response.value(key).unwrap_or_else(|| panic!("{key} in {}", response.body)).to_string();
    (value("hostname"), value("client_address"))
}

/// Routes an address from the router (where the client's traffic enters) to one node.
fn route_via(lab: &Lab, addr: &str, node: &str) {
    let hop = lab.node(node).unwrap().ipv4.to_string();
    lab.exec_in(lab.router(), &["ip", "route", "replace", addr, "via", &hop]).unwrap();
}

fn vip_route(lab: &Lab) -> String {
    lab.exec_in(lab.router(), &["ip", "route", "show", &LB_VIP4.to_string()]).unwrap()
}

#[test]
fn the_source_ip_tutorial() {
    let Some(lab) = start() else { return };
    let (cluster, local, moved) =
        (policy("tutorial-cluster.svc"), policy("tutorial-local.svc"), policy("tutorial-moved.svc"));
    lab.apply_policy_everywhere(&cluster).unwrap();

    // ClusterIP from pods on other nodes: the pod sees the client pod's own address.
    for pod in ["busybox-2", "busybox-3"] {
        let pod = lab.pod(pod).unwrap();
        assert_eq!(seen(&lab, &pod.ns, ip("10.0.170.92"), 80), pod.ipv4.to_string());
    }

    // A pod reaching itself through its service is masqueraded (hairpin), or its reply
    // would never find the translation to undo.
    let echo = lab.pod("source-ip-app").unwrap();
    assert_eq!(seen(&lab, &echo.ns, ip("10.0.170.92"), 80), "10.244.1.1");

    // NodePort, externalTrafficPolicy cluster: always masqueraded. node-1 reaches its
    // own pod over the pod bridge, the others over the node network.
    for (node, expected) in [("10.240.0.3", "10.244.1.1"), ("10.240.0.4", "10.240.0.4"), ("10.240.0.5", "10.240.0.5")] {
        assert_eq!(seen(&lab, lab.client(), ip(node), 30080), expected, "through {node}");
    }

    // externalTrafficPolicy local, changed on the live rules: an incremental apply
    // sends fewer operations than building the table from nothing.
    let (_, desired) = compile(&local, "node-2").unwrap();
    let cold = diff::diff(&Ruleset::default(), &desired).len();
    let report = lab.apply_policy("node-2", &local).unwrap();
    assert!(report.operations > 0 && report.operations < cold, "{report:?} vs {cold} from scratch");
    lab.apply_policy_everywhere(&local).unwrap();
    assert_eq!(seen(&lab, lab.client(), ip("10.240.0.3"), 30080), CLIENT4.to_string());
    for node in ["10.240.0.4", "10.240.0.5"] {
        assert_eq!(outcome(&lab, lab.client(), &format!("http://{node}:30080/")), Outcome::TimedOut, "{node}");
    }
    // Pods are short-circuited to every endpoint, through any node they reach it by.
    for (pod, node) in [("busybox-1", "10.240.0.3"), ("busybox-2", "10.240.0.4"), ("busybox-3", "10.240.0.5")] {
        let pod = lab.pod(pod).unwrap();
        assert_eq!(seen(&lab, &pod.ns, ip(node), 30080), pod.ipv4.to_string(), "{} through {node}", pod.name);
    }
    // Through another node, the unmasqueraded reply goes straight from the endpoint's
    // node to the pod, past the node that translated the request: the connection never
    // completes (kube-proxy's rules behave the same).
    let pod = lab.pod("busybox-2").unwrap();
    assert_eq!(outcome(&lab, &pod.ns, "http://10.240.0.5:30080/"), Outcome::TimedOut);

    // LoadBalancer, cluster policy: through whichever node the load balancer picks, the
    // pod sees that node. (No node serves a health check yet, so the load balancer
    // leaves the routes set here alone.)
    lab.apply_policy_everywhere(&cluster).unwrap();
    for (node, expected) in [("node-1", "10.244.1.1"), ("node-2", "10.240.0.4"), ("node-3", "10.240.0.5")] {
        route_via(&lab, &LB_VIP4.to_string(), node);
        assert_eq!(seen(&lab, lab.client(), LB_VIP4, 80), expected, "through {node}");
    }

    // LoadBalancer, local policy, with svcnft's node agent on every node following
    // one policy file: only node-1 has a local endpoint, so only its health check
    // says 200, the load balancer sends the VIP there and the source is kept.
    let live = std::env::temp_dir().join(format!("svcnft-lab-{}-live.svc", std::process::id()));
    std::fs::copy(&local[0], &live).unwrap();
    let agents: Vec<u32> =
        lab.nodes().iter().map(|n| lab.start_agent(&n.name, std::slice::from_ref(&live)).unwrap()).collect();
    assert_health(&lab, &[("10.240.0.3", 200, 1), ("10.240.0.4", 503, 0), ("10.240.0.5", 503, 0)]);
    lab.wait_until(Duration::from_secs(10), || vip_route(&lab).contains("via 10.240.0.3")).unwrap();
    assert_eq!(answer(&lab, lab.client(), "http://198.51.100.140/"), ("source-ip-app".into(), CLIENT4.to_string()));

    // The endpoint moves to node-2 by an edit of the file: the agents apply it, and
    // health and traffic follow.
    let moved_text = std::fs::read_to_string(&moved[0]).unwrap();
    std::fs::write(&live, moved_text).unwrap();
    lab.wait_until(Duration::from_secs(10), || health_of(&lab, "10.240.0.4") == 200).unwrap();
    assert_health(&lab, &[("10.240.0.3", 503, 0), ("10.240.0.4", 200, 1), ("10.240.0.5", 503, 0)]);
    lab.wait_until(Duration::from_secs(10), || vip_route(&lab).trim().ends_with("via 10.240.0.4 dev br0")).unwrap();
    assert_eq!(answer(&lab, lab.client(), "http://198.51.100.140/"), ("busybox-2".into(), CLIENT4.to_string()));
    for pid in agents {
        lab.stop(pid).unwrap();
    }
    std::fs::remove_file(&live).unwrap();

    // Clean up: svcnft's tables go, and with them the services.
    for node in lab.nodes() {
        assert!(lab.cleanup(&node.name).unwrap().operations > 0);
        assert_eq!(lab.exec_in(&node.ns, &["nft", "list", "ruleset"]).unwrap(), "");
    }
    assert!(!matches!(outcome(&lab, lab.client(), "http://10.240.0.3:30080/"), Outcome::Answered(_)));
    let pod = lab.pod("busybox-2").unwrap();
    assert!(!matches!(outcome(&lab, &pod.ns, "http://10.0.170.92/"), Outcome::Answered(_)));
}

/// The status of a node's health-check node port, as the load balancer gets it.
fn health_of(lab: &Lab, node: &str) -> u16 {
    lab.http_get_from(lab.client(), ip(node), HEALTH_CHECK_PORT).map_or(0, |r| r.status)
}

/// Each node's health-check answer, as the load balancer gets it.
fn assert_health(lab: &Lab, expected: &[(&str, u16, usize)]) {
    for &(node, status, endpoints) in expected {
        let response = lab.http_get_from(lab.client(), ip(node), HEALTH_CHECK_PORT).unwrap();
        assert_eq!(response.status, status, "{node}: {}", response.body);
        assert!(response.body.contains(&format!("\"localEndpoints\":{endpoints}")), "{}", response.body);
        assert!(response.body.contains(r#""name":"loadbalancer""#), "{}", response.body);
    }
}

#[test]
fn session_affinity_keeps_a_client_on_one_endpoint() {
    let Some(lab) = start() else { return };
    lab.apply_policy_everywhere(&policy("features.svc")).unwrap();
    let pod = lab.pod("busybox-1").unwrap();
    for (ns, url) in [(lab.client(), "http://10.240.0.4:30090/"), (pod.ns.as_str(), "http://10.0.1.10/")] {
        let first = answer(&lab, ns, url).0;
        assert!(first == "busybox-2" || first == "busybox-3", "{first}");
        for _ in 1..20 {
            assert_eq!(answer(&lab, ns, url).0, first, "{url} from {ns}");
        }
    }
}

#[test]
fn source_ranges_admit_only_listed_clients() {
    let Some(lab) = start() else { return };
    lab.apply_policy_everywhere(&policy("features.svc")).unwrap();
    route_via(&lab, "198.51.100.150", "node-2");
    // The client is inside 203.0.113.0/24: admitted, and masqueraded (policy cluster).
    assert_eq!(answer(&lab, lab.client(), "http://198.51.100.150/"), ("source-ip-app".into(), "10.240.0.4".into()));
    // The router (10.240.0.1) is not: dropped before DNAT.
    assert_eq!(outcome(&lab, lab.router(), "http://198.51.100.150/"), Outcome::TimedOut);
    // Node ports are not filtered by source ranges.
    assert_eq!(answer(&lab, lab.router(), "http://10.240.0.4:30091/").1, "10.240.0.4");
}

#[test]
fn terminating_endpoints_serve_when_none_is_ready() {
    let Some(lab) = start() else { return };
    lab.apply_policy_everywhere(&policy("features.svc")).unwrap();
    let pod = lab.pod("busybox-1").unwrap();
    for _ in 0..5 {
        assert_eq!(answer(&lab, &pod.ns, "http://10.0.1.30/"), ("busybox-2".into(), pod.ipv4.to_string()));
    }
}

#[test]
fn udp_services() {
    let Some(lab) = start() else { return };
    lab.apply_policy_everywhere(&policy("features.svc")).unwrap();
    assert_eq!(answer(&lab, lab.client(), "udp://10.240.0.3:30053"), ("busybox-3".into(), "10.240.0.3".into()));
    let pod = lab.pod("busybox-1").unwrap();
    assert_eq!(answer(&lab, &pod.ns, "udp://10.0.1.40:53"), ("busybox-3".into(), pod.ipv4.to_string()));
    // No endpoint anywhere: rejected, a refusal rather than silence.
    assert_eq!(outcome(&lab, &pod.ns, "http://10.0.1.80/"), Outcome::Refused);
}

#[test]
fn dual_stack_service_over_ipv6() {
    let Some(lab) = start() else { return };
    lab.apply_policy_everywhere(&policy("features.svc")).unwrap();
    let client6 = CLIENT6.to_string();
    // externalTrafficPolicy local over IPv6: the client's address is kept where an
    // endpoint is local, and a node without one drops.
    assert_eq!(answer(&lab, lab.client(), "http://[fd00:240::3]:30092/"), ("source-ip-app".into(), client6.clone()));
    assert_eq!(answer(&lab, lab.client(), "udp://[fd00:240::4]:30092"), ("busybox-2".into(), client6));
    assert_eq!(outcome(&lab, lab.client(), "http://[fd00:240::5]:30092/"), Outcome::TimedOut);
    let pod = lab.pod("busybox-3").unwrap();
    let (host, source) = answer(&lab, &pod.ns, "http://[fd00:96::50]/");
    assert!(host == "source-ip-app" || host == "busybox-2", "{host}");
    assert_eq!(source, pod.ipv6.to_string());
    // The same service over IPv4.
    assert_eq!(answer(&lab, &pod.ns, "http://10.0.1.50/").1, pod.ipv4.to_string());
}
