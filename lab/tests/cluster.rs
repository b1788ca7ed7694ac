//! The lab against the kernel: topology, source addresses, NAT and the load balancer.
//! Needs root and `ip`/`nft`; skips otherwise, except under `CI=true`, where it fails.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use svcnft_lab::lab::{CLIENT4, CLIENT6, ECHO_PORT, HEALTH_CHECK_PORT, LB_VIP4, LB_VIP6};
use svcnft_lab::Lab;

mod common;
use common::{missing, seen, start};

/// The router's route for the IPv4 VIP: where the load balancer sends it.
fn vip_route(lab: &Lab) -> String {
    lab.exec_in(lab.router(), &["ip", "route", "show", &LB_VIP4.to_string()]).unwrap()
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

#[test]
fn every_namespace_reaches_the_echo_pod_and_is_seen_unchanged() {
    let Some(lab) = start() else { return };
    let echo = lab.pod("source-ip-app").unwrap().clone();
    let n = |name: &str| lab.node(name).unwrap().clone();
    let p = |name: &str| lab.pod(name).unwrap().clone();
    // Without NAT the pod sees the sender's own address for the path taken: a node
    // reaches its own pods from its pod bridge, other nodes from their node address.
    let cases: Vec<(String, IpAddr, IpAddr)> = vec![
        (lab.client().into(), CLIENT4.into(), CLIENT6.into()),
        (lab.router().into(), "10.240.0.1".parse().unwrap(), "fd00:240::1".parse().unwrap()),
        (n("node-1").ns, n("node-1").pod_gateway4.into(), n("node-1").pod_gateway6.into()),
        (n("node-2").ns, n("node-2").ipv4.into(), n("node-2").ipv6.into()),
        (n("node-3").ns, n("node-3").ipv4.into(), n("node-3").ipv6.into()),
        (p("busybox-1").ns, p("busybox-1").ipv4.into(), p("busybox-1").ipv6.into()),
        (p("busybox-2").ns, p("busybox-2").ipv4.into(), p("busybox-2").ipv6.into()),
        (p("busybox-3").ns, p("busybox-3").ipv4.into(), p("busybox-3").ipv6.into()),
    ];
    for (ns, v4, v6) in cases {
        assert_eq!(seen(&lab, &ns, echo.ipv4, ECHO_PORT), v4.to_string(), "from {ns}");
        assert_eq!(seen(&lab, &ns, echo.ipv6, ECHO_PORT), v6.to_string(), "from {ns}");
    }
}

#[test]
fn client_and_pods_reach_node_addresses() {
    let Some(lab) = start() else { return };
    let node = lab.node("node-3").unwrap();
    lab.start_echo(&node.ns, "node-3", 9000, 200).unwrap();
    assert_eq!(seen(&lab, lab.client(), node.ipv4, 9000), CLIENT4.to_string());
    assert_eq!(seen(&lab, lab.client(), node.ipv6, 9000), CLIENT6.to_string());
    let pod = lab.pod("busybox-2").unwrap();
    assert_eq!(seen(&lab, &pod.ns, node.ipv4, 9000), pod.ipv4.to_string());
}

#[test]
fn udp_echo_reports_the_client() {
    let Some(lab) = start() else { return };
    let echo = lab.pod("source-ip-app").unwrap();
    for (addr, client) in [
        (format!("{}:{ECHO_PORT}", echo.ipv4), CLIENT4.to_string()),
        (format!("[{}]:{ECHO_PORT}", echo.ipv6), CLIENT6.to_string()),
    ] {
        let response = lab.get_from(lab.client(), &format!("udp://{addr}/hello")).unwrap();
        assert_eq!(response.value("client_address"), Some(client.as_str()));
        assert_eq!(response.value("real path"), Some("/hello"));
    }
}

/// Loads hand-written nftables rules into a node: `nft` as an oracle for the topology,
/// independent of svcnft.
fn load_nft(lab: &Lab, node: &svcnft_lab::Node, text: &str) {
    let file = std::env::temp_dir().join(format!("{}-{}.nft", lab.prefix(), node.name));
    std::fs::write(&file, text).unwrap();
    lab.exec_in(&node.ns, &["nft", "-f", &file.to_string_lossy()]).unwrap();
    std::fs::remove_file(file).unwrap();
}

/// A node port 30080 forwarded to the echo pod, the way kube-proxy does it, optionally
/// masqueraded.
fn node_port_rules(node: &svcnft_lab::Node, masquerade: bool) -> String {
    let post = if masquerade {
        "chain post { type nat hook postrouting priority srcnat; ct status dnat masquerade; }"
    } else {
        ""
    };
    format!(
        "table inet lab {{
            chain pre {{
                type nat hook prerouting priority dstnat;
                ip daddr {} tcp dport 30080 dnat ip to 10.244.1.5:8080
                ip6 daddr {} tcp dport 30080 dnat ip6 to [fd00:244:1::5]:8080
            }}
            {post}
        }}",
        node.ipv4, node.ipv6
    )
}

#[test]
fn masquerade_replaces_the_client_address_with_the_node_address() {
    let Some(lab) = start() else { return };
    // On the endpoint's own node, DNAT alone keeps the client's address (eTP Local).
    let node1 = lab.node("node-1").unwrap();
    load_nft(&lab, node1, &node_port_rules(node1, false));
    assert_eq!(seen(&lab, lab.client(), node1.ipv4, 30080), CLIENT4.to_string());
    assert_eq!(seen(&lab, lab.client(), node1.ipv6, 30080), CLIENT6.to_string());
    // Through another node the reply must come back that way: masquerade, and the pod
    // sees that node (the tutorial's `client_address=10.240.0.5`).
    let node2 = lab.node("node-2").unwrap();
    load_nft(&lab, node2, &node_port_rules(node2, true));
    assert_eq!(seen(&lab, lab.client(), node2.ipv4, 30080), node2.ipv4.to_string());
    assert_eq!(seen(&lab, lab.client(), node2.ipv6, 30080), node2.ipv6.to_string());
}

#[test]
fn an_invalid_policy_never_reaches_a_node() {
    let Some(lab) = start() else { return };
    let file = std::env::temp_dir().join(format!("{}-bad.svc", lab.prefix()));
    std::fs::write(&file, "service default/x { port 80/tcp }\n").unwrap();
    let err = lab.apply_policy("node-1", std::slice::from_ref(&file)).unwrap_err();
    std::fs::remove_file(file).unwrap();
    assert!(matches!(err, svcnft_lab::Error::Policy(_)), "{err}");
}

#[test]
fn load_balancer_follows_node_health() {
    let Some(lab) = start() else { return };
    // Stand-ins for svcnft: each node owns the VIPs and answers the health-check port,
    // naming itself, with 200 or 503.
    let mut stubs = Vec::new();
    for node in lab.nodes() {
        for vip in [format!("{LB_VIP4}/32"), format!("{LB_VIP6}/128")] {
            lab.exec_in(&node.ns, &["ip", "addr", "add", &vip, "dev", "lo"]).unwrap();
        }
        let status = if node.name == "node-1" { 200 } else { 503 };
        stubs.push(lab.start_echo(&node.ns, &node.name, HEALTH_CHECK_PORT, status).unwrap());
    }
    let reached = |vip: IpAddr| {
        lab.http_get_from(lab.client(), vip, HEALTH_CHECK_PORT).ok().and_then(|r| r.value("hostname").map(String::from))
    };
    let limit = Duration::from_secs(10);
    for vip in [IpAddr::from(LB_VIP4), LB_VIP6.into()] {
        lab.wait_until(limit, || reached(vip).as_deref() == Some("node-1")).unwrap();
    }
    // Flip: node-1 fails, node-2 recovers.
    for (i, status) in [(0, 503), (1, 200)] {
        let node = &lab.nodes()[i];
        lab.stop(stubs[i]).unwrap();
        stubs[i] = lab.start_echo(&node.ns, &node.name, HEALTH_CHECK_PORT, status).unwrap();
    }
    for vip in [IpAddr::from(LB_VIP4), LB_VIP6.into()] {
        lab.wait_until(limit, || reached(vip).as_deref() == Some("node-2")).unwrap();
    }
    // Two healthy nodes share the VIP.
    let node3 = &lab.nodes()[2];
    lab.stop(stubs[2]).unwrap();
    stubs[2] = lab.start_echo(&node3.ns, &node3.name, HEALTH_CHECK_PORT, 200).unwrap();
    let route = || vip_route(&lab);
    lab.wait_until(limit, || {
        let r = route();
        r.contains("via 10.240.0.4") && r.contains("via 10.240.0.5")
    })
    .unwrap();
    // A node that stops answering leaves the set.
    lab.stop(stubs[1]).unwrap();
    lab.wait_until(limit, || route().contains("via 10.240.0.5") && !route().contains("10.240.0.4")).unwrap();
    // None left: the VIP is dropped.
    lab.stop(stubs[2]).unwrap();
    lab.wait_until(limit, || route().starts_with("blackhole")).unwrap();
    assert!(lab.http_get_from(lab.client(), LB_VIP4.into(), HEALTH_CHECK_PORT).is_err());
}

#[test]
fn vips_are_dropped_until_a_node_is_healthy() {
    let Some(lab) = start() else { return };
    assert!(vip_route(&lab).starts_with("blackhole"));
    assert!(lab.http_get_from(lab.client(), LB_VIP4.into(), 80).is_err());
}

#[test]
fn dropping_the_lab_removes_everything_even_on_panic() {
    let Some(lab) = start() else { return };
    let prefix = lab.prefix().to_string();
    assert_eq!(lab_namespaces(&prefix).len(), 9);
    let echo = lab.pod("source-ip-app").unwrap().ns.clone();
    let server = Command::new("ip").args(["netns", "pids", &echo]).output().unwrap();
    let server = String::from_utf8_lossy(&server.stdout).trim().to_string();
    assert!(!server.is_empty());
    drop(lab);
    assert!(lab_namespaces(&prefix).is_empty());
    assert!(!std::path::Path::new(&format!("/proc/{server}")).exists());

    let prefix = std::panic::catch_unwind(|| {
        let lab = start().unwrap();
        std::panic::panic_any(lab.prefix().to_string());
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    assert!(lab_namespaces(&prefix).is_empty());
}

#[test]
fn leftovers_of_a_dead_run_are_removed() {
    if missing().is_some() {
        assert!(start().is_none());
        return;
    }
    // No process has this pid (above the kernel's maximum), so the lab is stale.
    let stale = "svl9999999x0";
    let ns = format!("{stale}-router");
    Command::new("ip").args(["netns", "add", &ns]).status().unwrap();
    let lab = start().unwrap();
    assert!(lab_namespaces(stale).is_empty());
    drop(lab);
}

/// Removes a lab started through the command line even if the test fails.
struct Removes(String);

impl Drop for Removes {
    fn drop(&mut self) {
        let _ = svcnft_lab::lab::remove(&self.0);
    }
}

#[test]
fn command_line_brings_the_lab_up_and_down() {
    if missing().is_some() {
        assert!(start().is_none());
        return;
    }
    let bin = env!("CARGO_BIN_EXE_svcnft-lab");
    let dir = std::env::temp_dir().join(format!("svcnft-lab-cli-{}", std::process::id()));
    let prefix = format!("svl{}x900", std::process::id());
    let _removes = Removes(prefix.clone());
    let cli = |args: &[&str]| {
        let out = Command::new(bin).args(args).env("SVCNFT_LAB_DIR", &dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let up = cli(&["up", "--prefix", &prefix]);
    assert!(up.contains("get http://10.244.1.5:8080/"), "{up}");
    assert_eq!(lab_namespaces(&prefix).len(), 9);
    // The lab outlives `up`: its echo pod answers the printed command.
    let client = format!("{prefix}-client");
    let get =
        Command::new("ip").args(["netns", "exec", &client, bin, "get", "http://10.244.1.5:8080/"]).output().unwrap();
    let body = String::from_utf8_lossy(&get.stdout);
    assert!(body.contains(&format!("client_address={CLIENT4}")), "{body}");
    assert!(cli(&["up"]).contains("already up"));
    let status = cli(&["status"]);
    assert!(status.contains(&format!("load balancer: blackhole {LB_VIP4}")), "{status}");
    cli(&["down"]);
    assert!(lab_namespaces(&prefix).is_empty());
    assert!(cli(&["down"]).contains("no lab is up"));
    std::fs::remove_dir_all(&dir).unwrap();
}
