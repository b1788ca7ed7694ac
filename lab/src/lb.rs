//! A packet-forwarding load balancer: it routes the VIPs to the healthy nodes and leaves
//! packets untouched, so the node sees the client's own source address (the category of
//! cloud load balancer for which `externalTrafficPolicy: Local` preserves the source).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::http::{self, Target};
use crate::Error;

/// What to balance and how to judge health: a backend is healthy while
/// `http://BACKEND:HEALTH_PORT/` answers 200.
#[derive(Debug, Clone)]
pub struct LoadBalancerConfig {
    pub vips: Vec<IpAddr>,
    pub backends: Vec<IpAddr>,
    pub health_port: u16,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Polls the backends forever and rewrites each VIP's route when its healthy set changes.
/// Runs in the router's namespace, where the routes live.
pub fn run(config: &LoadBalancerConfig) -> Result<(), Error> {
    let mut routed: Vec<Option<Vec<IpAddr>>> = vec![None; config.vips.len()];
    loop {
        let healthy = healthy_backends(config);
        for (vip, last) in config.vips.iter().zip(routed.iter_mut()) {
            let hops: Vec<IpAddr> = healthy.iter().copied().filter(|hop| hop.is_ipv4() == vip.is_ipv4()).collect();
            if last.as_ref() != Some(&hops) {
                crate::lab::run(Command::new("ip").args(route_args(*vip, &hops)))?;
                let shown: Vec<String> = hops.iter().map(IpAddr::to_string).collect();
                println!("{vip} -> [{}]", shown.join(", "));
                *last = Some(hops);
            }
        }
        thread::sleep(config.interval);
    }
}

/// Checks every backend at once, so one dead node costs one timeout, not one per node.
fn healthy_backends(config: &LoadBalancerConfig) -> Vec<IpAddr> {
    thread::scope(|scope| {
        let checks: Vec<_> = config
            .backends
            .iter()
            .map(|&backend| {
                scope.spawn(move || {
                    let target =
                        Target { udp: false, addr: SocketAddr::new(backend, config.health_port), path: "/".into() };
                    let up = matches!(http::get(&target, config.timeout), Ok(r) if r.status == 200);
                    up.then_some(backend)
                })
            })
            .collect();
        checks.into_iter().filter_map(|check| check.join().ok().flatten()).collect()
    })
}

/// The `ip route replace` arguments sending `vip` over `hops` (ECMP when several), or
/// dropping it when there is none, as a load balancer with no healthy backend does.
pub(crate) fn route_args(vip: IpAddr, hops: &[IpAddr]) -> Vec<String> {
    let (family, host) = if vip.is_ipv4() { ("-4", format!("{vip}/32")) } else { ("-6", format!("{vip}/128")) };
    let mut args: Vec<String> = vec![family.into(), "route".into(), "replace".into()];
    match hops {
        [] => args.extend(["blackhole".into(), host]),
        [hop] => args.extend([host, "via".into(), hop.to_string()]),
        _ => {
            args.push(host);
            for hop in hops {
                args.extend(["nexthop".into(), "via".into(), hop.to_string()]);
            }
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_follow_the_healthy_set() {
        let vip = ip("198.51.100.140");
        assert_eq!(route_args(vip, &[]).join(" "), "-4 route replace blackhole 198.51.100.140/32");
        assert_eq!(route_args(vip, &[ip("10.240.0.3")]).join(" "), "-4 route replace 198.51.100.140/32 via 10.240.0.3");
        assert_eq!(
            route_args(ip("2001:db8:140::140"), &[ip("fd00:240::3"), ip("fd00:240::4")]).join(" "),
            "-6 route replace 2001:db8:140::140/128 nexthop via fd00:240::3 nexthop via fd00:240::4"
        );
    }
}
