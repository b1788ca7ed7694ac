//! `svcnft trace` and `svcnft compile` on the command line: the JSON contract,
//! the tutorial's answers for every node of the lab example, and input errors.

use std::process::Command;

use serde_json::Value;

const LAB: &str = "examples/source-ip-lab.svc";

fn svcnft(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_svcnft")).args(args).output().expect("runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (out.status.code(), text(out.stdout), text(out.stderr))
}

fn trace_json(node: &str, from: &str, to: &str, proto: &str) -> Value {
    let (code, stdout, stderr) =
        svcnft(&["trace", LAB, "--node", node, "--from", from, "--to", to, "--proto", proto, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).expect("one JSON object")
}

/// The contract fields: verdict, endpoints, masquerade, source_seen.
fn summary(v: &Value) -> (String, Vec<String>, bool, Option<String>) {
    let verdict = v["verdict"].as_str().expect("verdict").to_string();
    let endpoints = v["endpoints"].as_array().expect("endpoints").iter().map(|e| e.as_str().unwrap().into()).collect();
    let masquerade = v["masquerade"].as_bool().expect("masquerade");
    let seen = v["source_seen"].as_str().map(String::from);
    assert!(v["path"].is_array(), "path is an array");
    (verdict, endpoints, masquerade, seen)
}

fn dnat(endpoint: &str, masquerade: bool, seen: &str) -> (String, Vec<String>, bool, Option<String>) {
    ("dnat".into(), vec![endpoint.into()], masquerade, Some(seen.into()))
}

#[test]
fn cluster_ip_from_a_pod_keeps_the_pod_address_on_every_node() {
    for (node, pod) in [("node-1", "10.244.1.9"), ("node-2", "10.244.2.9"), ("node-3", "10.244.3.9")] {
        let v = trace_json(node, pod, "10.0.170.92:80", "tcp");
        assert_eq!(summary(&v), dnat("10.244.1.5:8080", false, pod), "{node}");
    }
}

#[test]
fn node_port_with_local_policy_serves_only_where_the_endpoint_is() {
    let client = "203.0.113.2";
    let on_node_1 = trace_json("node-1", client, "10.240.0.3:30080", "tcp");
    assert_eq!(summary(&on_node_1), dnat("10.244.1.5:8080", false, client));
    for (node, address) in [("node-2", "10.240.0.4:30080"), ("node-3", "10.240.0.5:30080")] {
        let v = trace_json(node, client, address, "tcp");
        assert_eq!(summary(&v), ("drop".into(), vec![], false, None), "{node}");
    }
}

#[test]
fn load_balancer_ip_with_local_policy_keeps_the_client_address() {
    let v = trace_json("node-1", "203.0.113.2", "198.51.100.140:80", "tcp");
    assert_eq!(summary(&v), dnat("10.244.1.5:8080", false, "203.0.113.2"));
    let pod_elsewhere = trace_json("node-2", "10.244.2.9", "198.51.100.140:80", "tcp");
    assert_eq!(summary(&pod_elsewhere), dnat("10.244.1.5:8080", false, "10.244.2.9"), "pods short-circuit");
}

#[test]
fn unknown_port_and_protocol_on_a_cluster_ip_are_rejected() {
    let v = trace_json("node-2", "10.244.2.9", "10.0.170.92:81", "tcp");
    assert_eq!(summary(&v).0, "reject");
    let v = trace_json("node-2", "10.244.2.9", "10.0.170.92:80", "udp");
    assert_eq!(summary(&v).0, "reject");
}

#[test]
fn human_output_ends_with_the_summary_line() {
    let (code, stdout, _) =
        svcnft(&["trace", LAB, "--node", "node-2", "--from", "10.244.2.9", "--to", "10.0.170.92:80"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.lines().last(),
        Some(
            "10.244.2.9 -> 10.0.170.92:80/tcp: DNAT to 10.244.1.5:8080, not masqueraded; the endpoint sees 10.244.2.9"
        )
    );
}

#[test]
fn trace_input_errors_exit_2() {
    let cases: [&[&str]; 5] = [
        &["--node", "node-1", "--from", "10.0.0.x", "--to", "10.0.170.92:80"],
        &["--node", "node-1", "--from", "fd00::1", "--to", "10.0.170.92:80"],
        &["--node", "node-1", "--from", "10.0.0.1", "--to", "10.0.170.92"],
        &["--node", "node-1", "--from", "10.0.0.1", "--to", "10.0.170.92:80", "--proto", "icmp"],
        &["--node", "node-9", "--from", "10.0.0.1", "--to", "10.0.170.92:80"],
    ];
    for args in cases {
        let mut full = vec!["trace", LAB];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = svcnft(&full);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty() && stderr.starts_with("svcnft: "), "{args:?}: {stderr}");
    }
}

#[test]
fn compile_unknown_node_exits_2_and_json_has_plan_and_ruleset() {
    let (code, _, stderr) = svcnft(&["compile", LAB, "--node", "node-9"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown node `node-9`"), "{stderr}");
    let (code, stdout, _) = svcnft(&["compile", LAB, "--node", "node-1", "--format", "json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["plan"]["node"]["name"], "node-1");
    assert_eq!(v["ruleset"]["tables"][0]["name"], "svcnft");
}

#[test]
fn diff_shows_the_rules_and_operations_of_a_change() {
    let dir = std::env::temp_dir().join(format!("svcnft-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = std::fs::read_to_string(LAB).unwrap();
    let new = old.replace(
        "endpoints default/clusterip    { endpoint 10.244.1.5 node node-1 }",
        "endpoints default/clusterip    { endpoint 10.244.2.7 node node-2 }",
    );
    assert_ne!(old, new);
    std::fs::write(dir.join("new.svc"), new).unwrap();
    let (code, stdout, stderr) = svcnft(&["diff", LAB, dir.join("new.svc").to_str().unwrap(), "--node", "node-1"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    // The endpoint is an element of an endpoint map: its key stays, its value changes.
    assert!(stdout.contains("-\t\t\t491520 : 10.244.1.5 . 8080,"), "{stdout}");
    assert!(stdout.contains("+\t\t\t491520 : 10.244.2.7 . 8080,"), "{stdout}");
    assert!(stdout.contains("3 operations:"), "{stdout}");
    assert!(stdout.contains("delete element ip svcnft endpoints-0 { 491520 : 10.244.1.5 . 8080 }"), "{stdout}");
    assert!(stdout.contains("add element ip svcnft endpoints-0 { 491520 : 10.244.2.7 . 8080 }"), "{stdout}");
    assert!(stdout.contains("add element ip svcnft hairpin { 10.244.2.7 . 10.244.2.7 }"), "{stdout}");
}

#[test]
fn json_endpoints_are_sorted_as_strings() {
    let dir = std::env::temp_dir().join(format!("svcnft-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let policy = dir.join("sorted.svc");
    std::fs::write(
        &policy,
        "node n1 { address 10.0.0.1 }\nservice a/web { cluster-ip 10.96.0.1; port 80/tcp }\n\
         endpoints a/web {\n    endpoint 10.1.0.9 node n1\n    endpoint 10.1.0.10 node n1\n    endpoint 10.1.0.100 node n1\n}\n",
    )
    .expect("write");
    let path = policy.to_str().expect("utf-8 path");
    let (code, stdout, stderr) =
        svcnft(&["trace", path, "--node", "n1", "--from", "10.1.0.50", "--to", "10.96.0.1:80", "--json"]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(code, Some(0), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("one JSON object");
    let endpoints: Vec<&str> = v["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let mut sorted = endpoints.clone();
    sorted.sort();
    assert_eq!(endpoints, sorted);
    assert_eq!(endpoints, ["10.1.0.100:80", "10.1.0.10:80", "10.1.0.9:80"]);
}
