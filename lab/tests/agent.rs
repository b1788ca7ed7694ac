//! The node agent under traffic: killing and restarting it drops no connection,
//! because a restarted agent adopts the rules in place (no flush, zero operations).
//! Needs root and `ip`/`nft`; skips otherwise, except under `CI=true`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use svcnft_lab::http::{Outcome, Target};

mod common;
use common::{policy, start};

#[test]
fn restarting_the_agent_under_traffic_drops_no_connection() {
    let Some(lab) = start() else { return };
    let policy = policy("tutorial-cluster.svc");
    // Through node-2's node port to the echo pod on node-1: every connection needs
    // node-2's DNAT and masquerade rules.
    let target = Target::parse("http://10.240.0.4:30080/").unwrap();
    let mut agent = lab.start_agent("node-2", &policy).unwrap();
    let answers = || matches!(lab.probe_from(lab.client(), &target, Duration::from_secs(3)), Ok(Outcome::Answered(r)) if r.status == 200);
    lab.wait_until(Duration::from_secs(10), answers).expect("the agent's first sync serves the node port");
    let done = AtomicBool::new(false);
    let (answered, failures) = thread::scope(|s| {
        let traffic = s.spawn(|| {
            let (mut answered, mut failures) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match lab.probe_from(lab.client(), &target, Duration::from_secs(3)).unwrap() {
                    Outcome::Answered(r) if r.status == 200 => answered += 1,
                    other => failures.push(other),
                }
            }
            (answered, failures)
        });
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(300));
            lab.stop(agent).unwrap();
            thread::sleep(Duration::from_millis(200));
            agent = lab.start_agent("node-2", &policy).unwrap();
        }
        thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::Relaxed);
        traffic.join().unwrap()
    });
    lab.stop(agent).unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed: {failures:?}",
        failures.len(),
        answered + failures.len()
    );
    assert!(answered >= 20, "only {answered} connections were tried");
    let log = lab.agent_log("node-2").unwrap();
    assert!(log.contains("operations=0"), "a restarted agent adopts the rules unchanged:\n{log}");
}
