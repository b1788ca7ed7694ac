//! The cluster: a router, an external client, three nodes with pod bridges, and pods,
//! each a network namespace, wired by veth pairs that never touch the host's namespace.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use svcnft_compiler::{NodePlan, Ruleset};
use svcnft_runtime::apply::{Applier, ApplyReport};

use crate::http::{Outcome, Response, Target};
use crate::Error;

/// The port the echo pod serves on (TCP and UDP), as in the tutorial.
pub const ECHO_PORT: u16 = 8080;
/// The load balancer's addresses, one per family.
pub const LB_VIP4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 140);
pub const LB_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x140, 0, 0, 0, 0, 0x140);
/// The health-check node port the load balancer polls (the worked example's).
pub const HEALTH_CHECK_PORT: u16 = 32122;
/// The router, on the node network.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x240, 0, 0, 0, 0, 0, 1);
/// The external client, outside the cluster.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2);

/// The pods: name, node index, host part of the address. The echo pod is the
/// tutorial's `source-ip-app`; the others are clients on each node.
const PODS: [(&str, u8, u8); 4] =
    [("source-ip-app", 1, 5), ("busybox-1", 1, 6), ("busybox-2", 2, 5), ("busybox-3", 3, 5)];

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Starts every namespace name, so that labs never collide and leftovers are found.
    pub prefix: String,
    /// The `svcnft-lab` binary, run inside namespaces (echo server, load balancer, `get`).
    pub tool: PathBuf,
    /// How often the load balancer polls the health-check node ports.
    pub health_interval: Duration,
}

impl LabConfig {
    /// A configuration with a prefix unique to this process and lab (`svl<pid>x<n>`).
    pub fn new(tool: impl Into<PathBuf>) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("svl{}x{n}", std::process::id()),
            tool: tool.into(),
            health_interval: Duration::from_secs(1),
        }
    }
}

/// A node: its namespace, its node-network addresses and its pod network.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The pod bridge's addresses: the first of the node's pod CIDRs, the pods' gateway.
    pub pod_gateway4: Ipv4Addr,
    pub pod_gateway6: Ipv6Addr,
}

/// A pod: a namespace behind its node's pod bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub node: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// A running lab. Dropping it kills its processes and removes its namespaces, unless it
/// was [detached](Lab::detach) to outlive this process.
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    router: String,
    client: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    children: Mutex<Vec<Child>>,
    owned: bool,
}

impl Lab {
    /// Builds the whole cluster and starts the echo pod and the load balancer.
    pub fn up(config: LabConfig) -> Result<Self, Error> {
        remove_stale_labs()?;
        remove(&config.prefix)?;
        let mut lab = Self::layout(config);
        lab.owned = true;
        fs::create_dir_all(lab.log_dir())?;
        lab.build()?;
        lab.start_services()?;
        Ok(lab)
    }

    /// Describes a lab that is already up (started by another process) without taking
    /// ownership: dropping the result leaves the lab running.
    pub fn attach(config: LabConfig) -> Result<Self, Error> {
        let lab = Self::layout(config);
        if !namespaces()?.contains(&lab.router) {
            return Err(Error::NotUp(lab.config.prefix.clone()));
        }
        Ok(lab)
    }

    /// Leaves the lab running after this process exits and records its prefix for `down`.
    pub fn detach(mut self) -> Result<PathBuf, Error> {
        let state = state_file();
        fs::write(&state, format!("{}\n", self.config.prefix))?;
        // Not owned: the drop neither kills the children nor removes the namespaces.
        self.owned = false;
        Ok(state)
    }

    fn layout(config: LabConfig) -> Self {
        let p = &config.prefix;
        let nodes = (1..=3u8)
            .map(|i| Node {
                name: format!("node-{i}"),
                ns: format!("{p}-node-{i}"),
                ipv4: Ipv4Addr::new(10, 240, 0, i + 2),
                ipv6: Ipv6Addr::new(0xfd00, 0x240, 0, 0, 0, 0, 0, u16::from(i) + 2),
                pod_gateway4: Ipv4Addr::new(10, 244, i, 1),
                pod_gateway6: Ipv6Addr::new(0xfd00, 0x244, u16::from(i), 0, 0, 0, 0, 1),
            })
            .collect();
        let pods = PODS
            .iter()
            .map(|&(name, node, host)| Pod {
                name: name.into(),
                ns: format!("{p}-{name}"),
                node: format!("node-{node}"),
                ipv4: Ipv4Addr::new(10, 244, node, host),
                ipv6: Ipv6Addr::new(0xfd00, 0x244, node.into(), 0, 0, 0, 0, host.into()),
            })
            .collect();
        Self {
            router: format!("{p}-router"),
            client: format!("{p}-client"),
            nodes,
            pods,
            children: Mutex::new(Vec::new()),
            owned: false,
            config,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The router's namespace (the load balancer runs here).
    pub fn router(&self) -> &str {
        &self.router
    }

    /// The external client's namespace.
    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn node(&self, name: &str) -> Result<&Node, Error> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| Error::Unknown("node", name.into()))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, Error> {
        self.pods.iter().find(|p| p.name == name).ok_or_else(|| Error::Unknown("pod", name.into()))
    }

    /// Runs a command inside a namespace and returns its standard output.
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> Result<String, Error> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Starts a long-running `svcnft-lab` subcommand inside a namespace, logging to the
    /// lab's directory; returns its pid for [`Lab::stop`]. It dies with the lab.
    pub fn spawn_in(&self, ns: &str, args: &[&str]) -> Result<u32, Error> {
        let what = args.first().copied().unwrap_or("tool");
        let log = fs::File::create(self.log_dir().join(format!("{ns}-{what}.log")))?;
        let mut cmd = Command::new("ip");
        // Its own process group: a Ctrl-C or hangup of the terminal that ran `up` must not
        // reach the lab's servers.
        cmd.process_group(0)
            .args(["netns", "exec", ns])
            .arg(&self.config.tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| Error::Spawn(describe(&cmd), e))?;
        let pid = child.id();
        self.children.lock().expect("poisoned").push(child);
        Ok(pid)
    }

    /// Kills a process started by [`Lab::spawn_in`] and waits for it.
    pub fn stop(&self, pid: u32) -> Result<(), Error> {
        let mut children = self.children.lock().expect("poisoned");
        let i =
            children.iter().position(|c| c.id() == pid).ok_or_else(|| Error::Unknown("process", pid.to_string()))?;
        let mut child = children.swap_remove(i);
        let killed = child.kill();
        child.wait()?;
        Ok(killed?)
    }

    /// Starts an echo server in a namespace, named `name`, answering HTTP with `status`.
    pub fn start_echo(&self, ns: &str, name: &str, port: u16, status: u16) -> Result<u32, Error> {
        let (port, status) = (port.to_string(), status.to_string());
        let args = ["echo-server", "--name", name, "--port", &port, "--status", &status];
        let pid = self.spawn_in(ns, &args)?;
        self.wait_serving(ns, &port)?;
        Ok(pid)
    }

    /// Waits until an HTTP server of ours answers on `port` in `ns`, over loopback; on a
    /// loaded machine a start under `ip netns exec` can take seconds.
    fn wait_serving(&self, ns: &str, port: &str) -> Result<(), Error> {
        let url = format!("http://127.0.0.1:{port}/");
        self.wait_until(Duration::from_secs(15), || self.get_from(ns, &url).is_ok())
    }

    /// Fetches `url` (`http://…` or `udp://…`) from inside a namespace.
    pub fn get_from(&self, ns: &str, url: &str) -> Result<Response, Error> {
        let tool = self.config.tool.to_string_lossy();
        Response::from_wire(&self.exec_in(ns, &[&tool, "get", "--wire", url])?)
    }

    /// `GET http://addr:port/` from inside a namespace.
    pub fn http_get_from(&self, ns: &str, addr: IpAddr, port: u16) -> Result<Response, Error> {
        self.get_from(ns, &Target::url(addr, port))
    }

    /// Sends one request from inside a namespace, in this process (no `ip netns exec`, so
    /// thousands of them stay cheap), and tells how it ended.
    pub fn probe_from(&self, ns: &str, target: &Target, timeout: Duration) -> Result<Outcome, Error> {
        in_namespace(ns, || crate::http::probe(target, timeout))
    }

    /// Compiles `policy` for `node` and applies it to the node's kernel through svcnft's
    /// runtime, as `svcnft apply` does: the difference from what the node holds, in one
    /// atomic batch, so a changed policy updates live rules incrementally.
    pub fn apply_policy(&self, node: &str, policy: &[PathBuf]) -> Result<ApplyReport, Error> {
        let (_, ruleset) = compile(policy, node)?;
        let ns = &self.node(node)?.ns;
        Ok(in_namespace(ns, move || Applier::open().and_then(|mut applier| applier.apply(ruleset)))??)
    }

    /// Applies `policy` to every node, each compiled for itself.
    pub fn apply_policy_everywhere(&self, policy: &[PathBuf]) -> Result<(), Error> {
        self.nodes.iter().try_for_each(|n| self.apply_policy(&n.name, policy).map(drop))
    }

    /// Removes svcnft's tables from a node, as `svcnft cleanup` does.
    pub fn cleanup(&self, node: &str) -> Result<ApplyReport, Error> {
        Ok(in_namespace(&self.node(node)?.ns, || Applier::open().and_then(|mut applier| applier.cleanup()))??)
    }

    /// Starts svcnft's node agent on `node` for `policy` (files it keeps following):
    /// it adopts the node's rules and serves its health-check node ports. Returns
    /// once the agent's proxy health answers; the pid is for [`Lab::stop`].
    pub fn start_agent(&self, node: &str, policy: &[PathBuf]) -> Result<u32, Error> {
        let ns = &self.node(node)?.ns;
        let mut args = vec!["agent".to_string(), "--node".into(), node.into()];
        args.extend(policy.iter().map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = self.spawn_in(ns, &args)?;
        self.wait_serving(ns, "10256")?;
        Ok(pid)
    }

    /// What the agent last started on `node` has logged.
    pub fn agent_log(&self, node: &str) -> Result<String, Error> {
        let ns = &self.node(node)?.ns;
        Ok(fs::read_to_string(self.log_dir().join(format!("{ns}-agent.log")))?)
    }

    /// Polls `ready` until it holds, or fails after `limit`.
    pub fn wait_until(&self, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), Error> {
        let start = Instant::now();
        while !ready() {
            if start.elapsed() > limit {
                return Err(Error::Timeout(limit));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Commands a user can paste to walk through the tutorial in this lab.
    pub fn guide(&self) -> String {
        let tool = self.config.tool.display();
        let echo = &self.pods[0];
        let n2 = &self.nodes[1];
        let mut out = format!("lab `{}` is up:\n", self.config.prefix);
        out += &format!("  router {}   client {} ({CLIENT4}, {CLIENT6})\n", self.router, self.client);
        for n in &self.nodes {
            out += &format!("  {} {} ({}, {})\n", n.name, n.ns, n.ipv4, n.ipv6);
        }
        for p in &self.pods {
            out += &format!("  pod {} on {} {} ({}, {})\n", p.name, p.node, p.ns, p.ipv4, p.ipv6);
        }
        out += "\ntry:\n";
        out += &format!("  {tool} apply lab/policies/tutorial-cluster.svc   # svcnft's rules on every node\n");
        let rules = "   # once the nodes have svcnft's rules";
        for (ns, url, note) in [
            (&self.pods[2].ns, Target::url(echo.ipv4.into(), ECHO_PORT), ""),
            (&self.client, Target::url(echo.ipv6.into(), ECHO_PORT), ""),
            (&self.client, Target::url(n2.ipv4.into(), 30080), rules),
            (&self.client, Target::url(LB_VIP4.into(), 80), rules),
        ] {
            out += &format!("  ip netns exec {ns} {tool} get {url}{note}\n");
        }
        out += &format!("  ip netns exec {} nft list ruleset\n", n2.ns);
        out += &format!("  ip -n {} route show {LB_VIP4}\n", self.router);
        out += &format!("  logs: {}\n", self.log_dir().display());
        out
    }

    fn log_dir(&self) -> PathBuf {
        state_dir().join(&self.config.prefix)
    }

    fn ip(&self, ns: &str, args: &str) -> Result<(), Error> {
        run(Command::new("ip").args(["-n", ns]).args(args.split_whitespace())).map(drop)
    }

    fn add_ns(&self, ns: &str, forwarding: bool) -> Result<(), Error> {
        run(Command::new("ip").args(["netns", "add", ns]))?;
        self.ip(ns, "link set lo up")?;
        let fwd = u8::from(forwarding);
        // No duplicate address detection: addresses are usable at once, and unique by
        // construction. No reverse-path filter: ECMP and asymmetric paths are the point.
        self.exec_in(
            ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.ip_forward={fwd}"),
                &format!("net.ipv6.conf.all.forwarding={fwd}"),
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                // Every reject must reach its client: tests tell a reject from a drop by
                // the ICMP error, which rate limiting would turn into silence.
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv6.icmp.ratelimit=0",
            ],
        )
        .map(drop)
    }

    /// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), created inside `a` so
    /// that no end ever appears in the host's namespace.
    fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<(), Error> {
        self.ip(a, &format!("link add {a_if} type veth peer name {b_if} netns {b}"))
    }

    fn addr(&self, ns: &str, dev: &str, v4: Ipv4Addr, v4_len: u8, v6: Ipv6Addr) -> Result<(), Error> {
        self.ip(ns, &format!("addr add {v4}/{v4_len} dev {dev}"))?;
        self.ip(ns, &format!("addr add {v6}/64 dev {dev} nodad"))?;
        self.ip(ns, &format!("link set {dev} up"))
    }

    fn default_routes(&self, ns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(), Error> {
        self.ip(ns, &format!("-4 route add default via {v4}"))?;
        self.ip(ns, &format!("-6 route add default via {v6}"))
    }

    fn build(&self) -> Result<(), Error> {
        let (router, client) = (&self.router, &self.client);
        self.add_ns(router, true)?;
        self.add_ns(client, false)?;
        self.ip(router, "link add br0 type bridge")?;
        self.addr(router, "br0", ROUTER4, 24, ROUTER6)?;
        self.link(router, "ext0", client, "eth0")?;
        let ext6 = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 1);
        self.addr(router, "ext0", Ipv4Addr::new(203, 0, 113, 1), 24, ext6)?;
        self.addr(client, "eth0", CLIENT4, 24, CLIENT6)?;
        self.default_routes(client, Ipv4Addr::new(203, 0, 113, 1), ext6)?;
        for (i, node) in self.nodes.iter().enumerate() {
            let port = format!("n{}", i + 1);
            self.add_ns(&node.ns, true)?;
            self.link(router, &port, &node.ns, "eth0")?;
            self.ip(router, &format!("link set {port} master br0 up"))?;
            self.addr(&node.ns, "eth0", node.ipv4, 24, node.ipv6)?;
            self.ip(&node.ns, "link add cbr0 type bridge")?;
            self.addr(&node.ns, "cbr0", node.pod_gateway4, 24, node.pod_gateway6)?;
        }
        for (i, pod) in self.pods.iter().enumerate() {
            let node = self.node(&pod.node)?;
            let port = format!("vp{i}");
            self.add_ns(&pod.ns, false)?;
            self.link(&node.ns, &port, &pod.ns, "eth0")?;
            self.ip(&node.ns, &format!("link set {port} master cbr0 up"))?;
            // As kubelet's hairpin-veth mode: a pod reaching itself through a service
            // comes back out of the port it entered by, which a bridge refuses
            // otherwise once br_netfilter hands it the DNATed packet.
            self.ip(&node.ns, &format!("link set {port} type bridge_slave hairpin on"))?;
            self.addr(&pod.ns, "eth0", pod.ipv4, 24, pod.ipv6)?;
            self.default_routes(&pod.ns, node.pod_gateway4, node.pod_gateway6)?;
        }
        // Host-gateway routing: every pod CIDR is reached through its node, from the
        // router and from every other node.
        for node in &self.nodes {
            self.default_routes(&node.ns, ROUTER4, ROUTER6)?;
            for other in &self.nodes {
                let ns = if other.name == node.name { router } else { &other.ns };
                let (c4, c6) = pod_cidrs(node);
                self.ip(ns, &format!("-4 route add {c4} via {}", node.ipv4))?;
                self.ip(ns, &format!("-6 route add {c6} via {}", node.ipv6))?;
            }
        }
        Ok(())
    }

    fn start_services(&self) -> Result<(), Error> {
        // Every pod echoes, so that any of them can be an endpoint.
        for pod in &self.pods {
            self.start_echo(&pod.ns, &pod.name, ECHO_PORT, 200)?;
        }
        let mut args: Vec<String> = ["load-balancer", "--health-port"].map(String::from).into();
        args.push(HEALTH_CHECK_PORT.to_string());
        args.push("--interval-ms".into());
        args.push(self.config.health_interval.as_millis().to_string());
        for vip in [IpAddr::from(LB_VIP4), LB_VIP6.into()] {
            // Dropped until the first health check says otherwise, so the lab is in a
            // known state as soon as `up` returns.
            let route = crate::lb::route_args(vip, &[]);
            run(Command::new("ip").args(["-n", &self.router]).args(route))?;
            args.extend(["--vip".into(), vip.to_string()]);
        }
        for node in &self.nodes {
            for addr in [IpAddr::from(node.ipv4), node.ipv6.into()] {
                args.extend(["--backend".into(), addr.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_in(&self.router, &args).map(drop)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Ok(children) = self.children.get_mut() {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Err(e) = remove(&self.config.prefix) {
            eprintln!("svcnft-lab: removing lab {}: {e}", self.config.prefix);
        }
    }
}

/// Reads, checks and compiles a policy for one node.
pub fn compile(policy: &[PathBuf], node: &str) -> Result<(NodePlan, Ruleset), Error> {
    let files = svcnft_runtime::sources::read_policy(policy).map_err(|e| Error::Policy(e.to_string()))?;
    let checked = svcnft_compiler::check(&files).map_err(|d| Error::Policy(d.render(&files)))?;
    svcnft_compiler::compile(&checked.policy, node).map_err(|e| Error::Policy(e.to_string()))
}

/// Runs `f` on a thread that has entered the network namespace `ns`: sockets and netlink
/// opened there belong to `ns`, while the calling thread stays where it is.
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    Ok(svcnft_runtime::netns::in_namespace(ns, f)?)
}

fn pod_cidrs(node: &Node) -> (String, String) {
    let g = node.pod_gateway4.octets();
    let g6 = node.pod_gateway6.segments();
    (format!("{}.{}.{}.0/24", g[0], g[1], g[2]), format!("{:x}:{:x}:{:x}::/64", g6[0], g6[1], g6[2]))
}

/// The file `up` writes and `down` reads.
pub fn state_file() -> PathBuf {
    state_dir().join("current")
}

/// Where labs keep logs and `up` records what it built, so that `down` removes exactly
/// that: `$SVCNFT_LAB_DIR`, by default `/run/svcnft-lab`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("SVCNFT_LAB_DIR").map_or_else(|| PathBuf::from("/run/svcnft-lab"), PathBuf::from)
}

/// Every network namespace on the machine, by name.
fn namespaces() -> Result<Vec<String>, Error> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect())
}

/// Kills every process inside the lab's namespaces, then deletes the namespaces and logs.
pub fn remove(prefix: &str) -> Result<(), Error> {
    let ours: Vec<String> = namespaces()?
        .into_iter()
        .filter(|ns| ns.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('-')))
        .collect();
    // Another lab starting at the same time may be removing the same leftovers: what
    // vanishes meanwhile is not an error, what stays is.
    for ns in &ours {
        let pids = run(Command::new("ip").args(["netns", "pids", ns])).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = run(Command::new("kill").args(["-KILL", pid]));
        }
    }
    for ns in &ours {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
            if namespaces()?.contains(ns) {
                return Err(e);
            }
        }
    }
    match fs::remove_dir_all(state_dir().join(prefix)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes labs whose creating process is gone (`svl<pid>x<n>-…` with a dead pid): left
/// over by a run that was killed before it could clean up.
fn remove_stale_labs() -> Result<(), Error> {
    let mut stale: Vec<String> = namespaces()?
        .iter()
        .filter_map(|ns| {
            let prefix = ns.split('-').next()?;
            let (pid, n) = prefix.strip_prefix("svl")?.split_once('x')?;
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let dead = numeric(pid) && numeric(n) && !PathBuf::from(format!("/proc/{pid}")).exists();
            dead.then(|| prefix.to_string())
        })
        .collect();
    stale.dedup();
    stale.iter().try_for_each(|prefix| remove(prefix))
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, Error> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.spawn().map_err(|e| Error::Spawn(describe(cmd), e))?.wait_with_output()?;
    if !out.status.success() {
        return Err(Error::Command {
            command: describe(cmd),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
