//! Deleting stale UDP flows, with real flows: through DNAT, and one that missed it.

use std::net::UdpSocket;

use svcnft_runtime::agent::{remove_flows, UdpService};
use svcnft_runtime::netlink::Conntrack;
use svcnft_runtime::testns::{kernel_tests_enabled, TestNs};

const SETUP: &[&[&str]] = &[
    &["link", "set", "lo", "up"],
    &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    &["link", "set", "d1", "up"],
    &["addr", "add", "10.244.1.5/24", "dev", "d0"],
    &["addr", "add", "10.244.1.6/24", "dev", "d0"],
    &["link", "set", "d0", "up"],
    &["route", "add", "10.96.0.0/16", "dev", "d0"],
];

const DNAT: &str = "table ip t {
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr 10.96.0.10 udp dport 53 dnat to 10.244.1.5:5353
        ip daddr 10.96.0.10 udp dport 54 dnat to 10.244.1.6:5353
    }
}";

fn proc_conntrack(ns: &TestNs) -> String {
    let out = ns.exec("cat", &["/proc/net/nf_conntrack"]).expect("cat");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn removes_the_flows_no_serving_endpoint_answers() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = TestNs::new().expect("namespace");
    for args in SETUP {
        assert!(ns.exec("ip", args).unwrap().status.success(), "ip {args:?}");
    }
    ns.nft(&["-f", "-"], Some(DNAT)).expect("dnat rules");
    // Port 55 has no rule yet: its flow goes out undisturbed, as a client's
    // does when it talks to a service before the service has endpoints.
    ns.run(|| {
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
        for port in [53, 54, 55] {
            client.send_to(b"q", ("10.96.0.10", port)).unwrap();
        }
    })
    .unwrap();
    let before = proc_conntrack(&ns);
    let flow_to = |table: &str, port: &str| {
        table.lines().any(|l| l.contains("dst=10.96.0.10 sport=") && l.contains(&format!("dport={port} ")))
    };
    assert!(["53", "54", "55"].iter().all(|p| flow_to(&before, p)), "{before}");

    let service = |port: u16, serving: &str| UdpService {
        destinations: vec![format!("10.96.0.10:{port}").parse().unwrap()],
        node_port: None,
        serving: vec![serving.parse().unwrap()],
    };
    // Port 53's endpoint was removed (10.244.1.6 serves now); port 54's still
    // serves; port 55 now has a serving endpoint that its flow never reached.
    let services = [service(53, "10.244.1.6"), service(54, "10.244.1.6"), service(55, "10.244.1.5")];
    let (removed, left) = ns
        .run(|| {
            let removed = remove_flows(&services).expect("ctnetlink");
            let left = Conntrack::open().unwrap().flows(libc::AF_INET as u8).unwrap();
            (removed, left)
        })
        .unwrap();
    assert_eq!(removed, 2);
    let after = proc_conntrack(&ns);
    assert!(!flow_to(&after, "53") && !flow_to(&after, "55"), "{after}");
    assert!(flow_to(&after, "54"), "the serving endpoint's flow stays: {after}");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reply.source, "10.244.1.6:5353".parse().unwrap());
    assert_eq!(left[0].original.destination, "10.96.0.10:54".parse().unwrap());
}
