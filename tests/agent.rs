//! `svcnft run` in a network namespace: applying, following edits, repairing
//! drift, the servers' contracts, and stopping with or without cleanup.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use svcnft_runtime::agent::HEADER_READ_TIMEOUT;
use svcnft_runtime::testns::{kernel_tests_enabled, TestNs};

const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
const HEALTH_CHECK: &str = "10.240.0.3:32122";

const POLICY: &str = "cluster {
    cluster-cidr 10.244.0.0/16
    service-cidr 10.0.0.0/16
}
node node-1 { address 10.240.0.3; pod-cidr 10.244.1.0/24 }
node node-2 { address 10.240.0.4; pod-cidr 10.244.2.0/24 }
service default/lb {
    type load-balancer
    cluster-ip 10.0.65.118
    load-balancer-ip 198.51.100.140
    port 80/tcp target 8080 node-port 30081
    external-traffic-policy local
    health-check-node-port HC_PORT
}
endpoints default/lb {
ENDPOINTS
}
";

fn policy(endpoints: &str) -> String {
    POLICY.replace("ENDPOINTS", endpoints).replace("HC_PORT", "32122")
}

/// A namespace with the node's address on a veth pair, and a policy directory.
struct Node {
    ns: TestNs,
    dir: PathBuf,
}

impl Node {
    fn new(test: &str) -> Node {
        let ns = TestNs::new().expect("namespace");
        for args in [
            "link set lo up",
            "link add n0 type veth peer name n1",
            "addr add 10.240.0.3/24 dev n0",
            "link set n0 up",
            "link set n1 up",
        ] {
            let args: Vec<&str> = args.split(' ').collect();
            assert!(ns.exec("ip", &args).unwrap().status.success(), "ip {args:?}");
        }
        let dir = std::env::temp_dir().join(format!("svcnft-agent-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Node { ns, dir }
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.svc")
    }

    /// Replaces the policy the way editors do: write a temporary file, rename it.
    fn write_policy(&self, text: &str) {
        let tmp = self.dir.join(".policy.svc.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.policy_path()).unwrap();
    }

    fn start(&self, extra: &[&str]) -> Agent {
        let log = self.dir.join(format!("agent-{}.log", fs::read_dir(&self.dir).unwrap().count()));
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), env!("CARGO_BIN_EXE_svcnft"), "run"])
            .arg(self.policy_path())
            .args(["--node", "node-1", "--healthz-bind-address", HEALTHZ, "--sync-period", "10s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn svcnft run");
        Agent { child, log }
    }

    fn table(&self) -> Option<String> {
        self.ns.nft(&["list", "table", "ip", "svcnft"], None).ok()
    }

    fn get(&self, address: &str, path: &str) -> Option<Reply> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
        let raw = self.ns.run(|| exchange(address, request.as_bytes())).unwrap()?;
        Reply::parse(&raw)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends `request` and reads until the server closes (bounded).
fn exchange(address: &str, request: &[u8]) -> Option<String> {
    let address: SocketAddr = address.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).ok()?;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// The agent process; killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent did not stop on SIGTERM:\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(raw: &str) -> Option<Reply> {
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Reply { status, headers, body: body.to_string() })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Whether the server closes or resets `stream` before `deadline`.
fn closed_by_peer(mut stream: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).unwrap();
    match stream.read_to_end(&mut Vec::new()) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// Polls `f` until it holds or `timeout` passes; returns the time it took.
fn within(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if f() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A node running the agent on `policy`, or `None` where kernel tests cannot run.
fn started(test: &str, policy: &str) -> Option<(Node, Agent)> {
    if !kernel_tests_enabled() {
        return None;
    }
    let node = Node::new(test);
    node.write_policy(policy);
    let agent = node.start(&[]);
    Some((node, agent))
}

fn has(node: &Node, text: &str) -> bool {
    node.table().is_some_and(|t| t.contains(text))
}

fn status_of(node: &Node, address: &str, path: &str) -> Option<u16> {
    node.get(address, path).map(|r| r.status)
}

#[test]
fn follows_edits_repairs_drift_and_leaves_rules_on_sigterm() {
    let Some((node, mut agent)) = started("follow", &policy("endpoint 10.244.1.5 node node-1")) else { return };
    within(Duration::from_secs(5), || has(&node, "10.244.1.5")).unwrap_or_else(|| panic!("applied:\n{}", agent.log()));
    within(Duration::from_secs(2), || status_of(&node, HEALTHZ, "/healthz") == Some(200)).expect("healthy");

    node.write_policy(&policy("endpoint 10.244.1.7 node node-1"));
    let took = within(Duration::from_secs(1), || has(&node, "10.244.1.7"));
    assert!(took.is_some(), "an edit reaches the kernel within 1 s:\n{}", agent.log());

    fs::write(node.policy_path(), "service default/lb {\n    cluster-ip nonsense\n").unwrap();
    within(Duration::from_secs(2), || status_of(&node, HEALTHZ, "/healthz") == Some(503)).expect("reported unhealthy");
    let metrics = node.get(METRICS, "/metrics").expect("metrics").body;
    assert!(metrics.contains("svcnft_policy_applied 0"), "{metrics}");
    assert!(!metrics.contains("svcnft_policy_errors 0"), "{metrics}");
    assert!(has(&node, "10.244.1.7"), "the last good ruleset stays");
    let log = agent.log();
    let at = format!("{}:3:1: error", node.policy_path().display());
    assert!(log.contains(&at), "FILE:LINE:COL in the log:\n{log}");

    node.write_policy(&policy("endpoint 10.244.1.8 node node-1"));
    within(Duration::from_secs(1), || has(&node, "10.244.1.8")).expect("the next good edit recovers");
    within(Duration::from_secs(1), || status_of(&node, HEALTHZ, "/livez") == Some(200)).expect("healthy again");

    node.ns.nft(&["delete", "table", "ip", "svcnft"], None).unwrap();
    let took = within(Duration::from_secs(1), || has(&node, "10.244.1.8"));
    assert!(took.is_some(), "a deleted table is restored within 1 s:\n{}", agent.log());

    let syncs = agent.log().matches("synced").count();
    agent.signal(libc::SIGHUP);
    within(Duration::from_secs(2), || agent.log().matches("synced").count() > syncs)
        .expect("SIGHUP rereads the policy");
    assert!(agent.log().contains("SIGHUP"));

    assert!(agent.terminate().success());
    assert!(has(&node, "10.244.1.8"), "SIGTERM leaves the rules");
    assert!(status_of(&node, HEALTHZ, "/healthz").is_none(), "and stops serving");

    let mut agent = node.start(&["--cleanup-on-exit"]);
    within(Duration::from_secs(5), || agent.log().contains("synced")).expect("first sync");
    let log = agent.log();
    assert!(log.contains("operations=0"), "a restart adopts the table without changing it:\n{log}");
    assert!(agent.terminate().success());
    assert!(node.table().is_none(), "--cleanup-on-exit removes the table");
}

#[test]
fn health_check_node_port_contract() {
    let Some((node, agent)) =
        started("health", &policy("endpoint 10.244.1.5 node node-1\nendpoint 10.244.2.5 node node-2"))
    else {
        return;
    };
    let check = |status: u16, local: u64| {
        let reply = within(Duration::from_secs(2), || status_of(&node, HEALTH_CHECK, "/any") == Some(status))
            .and_then(|_| node.get(HEALTH_CHECK, "/any/path"))
            .unwrap_or_else(|| panic!("health check answers {status}:\n{}", agent.log()));
        assert_eq!(reply.status, status);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("x-load-balancing-endpoint-weight"), Some(local.to_string().as_str()));
        let body = reply.json();
        assert_eq!(body["service"]["namespace"], "default");
        assert_eq!(body["service"]["name"], "lb");
        assert_eq!(body["localEndpoints"], local);
        assert_eq!(body["serviceProxyHealthy"], true);
    };
    check(200, 1);

    node.write_policy(&policy("endpoint 10.244.2.5 node node-2"));
    check(503, 0);
    let metrics = node.get(METRICS, "/metrics").unwrap().body;
    assert!(metrics.contains("svcnft_services_without_local_endpoints{traffic_policy=\"external\"} 1"), "{metrics}");

    node.write_policy(&policy("endpoint 10.244.1.5 node node-1 terminating\nendpoint 10.244.2.5 node node-2"));
    check(503, 0);

    node.write_policy(&POLICY.replace("ENDPOINTS", "endpoint 10.244.1.5 node node-1").replace("HC_PORT", "32123"));
    within(Duration::from_secs(2), || status_of(&node, "10.240.0.3:32123", "/") == Some(200)).expect("new port served");
    assert!(status_of(&node, HEALTH_CHECK, "/").is_none(), "the old port is closed");
}

#[test]
fn proxy_endpoints_and_malformed_or_slow_requests() {
    let Some((node, agent)) = started("servers", &policy("endpoint 10.244.1.5 node node-1")) else { return };
    within(Duration::from_secs(5), || status_of(&node, HEALTHZ, "/healthz") == Some(200))
        .unwrap_or_else(|| panic!("healthz:\n{}", agent.log()));
    let healthz = node.get(HEALTHZ, "/healthz").unwrap();
    assert_eq!(healthz.header("content-type"), Some("application/json"));
    let body = healthz.json();
    assert_eq!(body["healthy"], true);
    assert!(body["lastUpdated"].is_string() && body["currentTime"].is_string(), "{body}");
    assert_eq!(status_of(&node, HEALTHZ, "/nothing"), Some(404));
    assert_eq!(node.get(METRICS, "/proxyMode").unwrap().body, "nftables");
    assert_eq!(node.get(METRICS, "/healthz").unwrap().body, "ok");
    let metrics = node.get(METRICS, "/metrics").unwrap().body;
    for name in [
        "svcnft_sync_full_duration_seconds_bucket",
        "svcnft_sync_partial_duration_seconds_count 1",
        "svcnft_last_sync_timestamp_seconds",
        "svcnft_pending_changes 0",
        "svcnft_sync_failures_total 0",
        "svcnft_policy_applied 1",
        "svcnft_rules ",
        "svcnft_chains ",
        "svcnft_set_elements ",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }

    let garbage = node.ns.run(|| exchange(HEALTHZ, b"\x00\x01\x02 nonsense\r\n\r\n")).unwrap().unwrap_or_default();
    assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let huge = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let answer = node.ns.run(|| exchange(HEALTHZ, huge.as_bytes())).unwrap().unwrap_or_default();
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(200)]);

    // Slow clients: many connections that never finish their headers are all
    // closed after the header read timeout, and the server answers again.
    let (opened, closed) = node
        .ns
        .run(|| {
            let address: SocketAddr = HEALTHZ.parse().unwrap();
            let slow: Vec<TcpStream> = (0..200)
                .filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok())
                .inspect(|s| {
                    let _ = (&*s).write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
                })
                .collect();
            let deadline = Instant::now() + HEADER_READ_TIMEOUT + Duration::from_secs(3);
            (slow.len(), slow.iter().filter(|s| closed_by_peer(s, deadline)).count())
        })
        .unwrap();
    assert!(opened > 128, "more connections than the server serves at once: {opened}");
    assert_eq!(closed, opened, "every slow connection is closed");
    assert_eq!(status_of(&node, HEALTHZ, "/healthz"), Some(200), "still serving");
}

#[test]
fn an_invalid_policy_at_start_is_served_unhealthy_until_fixed() {
    let Some((node, agent)) = started("invalid", &policy("endpoint nonsense")) else { return };
    within(Duration::from_secs(5), || status_of(&node, HEALTHZ, "/healthz") == Some(503))
        .unwrap_or_else(|| panic!("unhealthy:\n{}", agent.log()));
    assert!(node.table().is_none(), "nothing reaches the kernel");
    node.write_policy(&policy("endpoint 10.244.1.5 node node-1"));
    within(Duration::from_secs(1), || has(&node, "10.244.1.5")).expect("the fixed policy is applied");
    within(Duration::from_secs(1), || status_of(&node, HEALTHZ, "/healthz") == Some(200)).expect("healthy");
}

const UDP_POLICY: &str = "cluster { cluster-cidr 10.244.0.0/16 }
node node-1 { address 10.240.0.3; pod-cidr 10.244.1.0/24 }
node node-2 { address 10.240.0.4; pod-cidr 10.244.2.0/24 }
service kube-system/dns {
    cluster-ip 10.96.0.10
    port dns 53/udp target 5353
}
endpoints kube-system/dns {
ENDPOINTS
}
";

#[test]
fn removing_a_udp_endpoint_deletes_its_flows() {
    let both = "endpoint 10.244.1.5 node node-1\nendpoint 10.244.2.5 node node-2";
    let Some((node, agent)) = started("udp", &UDP_POLICY.replace("ENDPOINTS", both)) else { return };
    for args in [["route", "add", "10.96.0.0/16", "dev", "n0"], ["route", "add", "10.244.0.0/16", "dev", "n0"]] {
        assert!(node.ns.exec("ip", &args).unwrap().status.success());
    }
    within(Duration::from_secs(2), || has(&node, "10.96.0.10")).unwrap_or_else(|| panic!("{}", agent.log()));
    let flows_to = |endpoint: &str| {
        let out = node.ns.exec("cat", &["/proc/net/nf_conntrack"]).unwrap();
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        table.lines().filter(|l| l.contains("dst=10.96.0.10") && l.contains(&format!("src={endpoint} "))).count()
    };
    node.ns
        .run(|| {
            for _ in 0..32 {
                std::net::UdpSocket::bind("0.0.0.0:0").unwrap().send_to(b"q", "10.96.0.10:53").unwrap();
            }
        })
        .unwrap();
    assert!(flows_to("10.244.1.5") > 0 && flows_to("10.244.2.5") > 0, "flows to both endpoints");

    node.write_policy(&UDP_POLICY.replace("ENDPOINTS", "endpoint 10.244.1.5 node node-1"));
    within(Duration::from_secs(1), || flows_to("10.244.2.5") == 0)
        .unwrap_or_else(|| panic!("the removed endpoint's flows are deleted:\n{}", agent.log()));
    assert!(flows_to("10.244.1.5") > 0, "the remaining endpoint's flows stay");
}

#[test]
fn a_udp_flow_that_started_before_its_service_is_deleted() {
    // Not the DNS service yet (another one, so that the table and conntrack are
    // there): the client's packets leave without DNAT, and conntrack would
    // keep its later ones on that path.
    let other = "service default/web { cluster-ip 10.96.0.20; port 80/tcp }\n\
                 endpoints default/web { endpoint 10.244.1.6 node node-1 }\n";
    let before = format!("{}{other}", UDP_POLICY.split("service ").next().unwrap());
    let Some((node, agent)) = started("udp-before", &before) else { return };
    for args in [["route", "add", "10.96.0.0/16", "dev", "n0"], ["route", "add", "10.244.0.0/16", "dev", "n0"]] {
        assert!(node.ns.exec("ip", &args).unwrap().status.success());
    }
    within(Duration::from_secs(2), || has(&node, "10.96.0.20")).unwrap_or_else(|| panic!("{}", agent.log()));
    let undnated = || {
        let out = node.ns.exec("cat", &["/proc/net/nf_conntrack"]).unwrap();
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        table.lines().filter(|l| l.matches("10.96.0.10").count() == 2).count()
    };
    node.ns.run(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap().send_to(b"q", "10.96.0.10:53").unwrap()).unwrap();
    assert_eq!(undnated(), 1, "a flow to the address itself");

    node.write_policy(&(UDP_POLICY.replace("ENDPOINTS", "endpoint 10.244.1.5 node node-1") + other));
    within(Duration::from_secs(1), || undnated() == 0)
        .unwrap_or_else(|| panic!("the flow that missed the DNAT is deleted:\n{}", agent.log()));
}
