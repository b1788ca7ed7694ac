//! What every lab test needs: a lab of its own, or a reason to skip (a failure under CI).
// Each test file compiles this module and uses part of it.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use svcnft_lab::{Lab, LabConfig};

/// Why the lab cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return Some("not root".into());
    }
    ["ip", "nft"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("-V").output().is_err())
        .map(|tool| format!("`{tool}` is not installed"))
}

/// A lab of this test's own, or `None` to skip; under `CI=true` a lab that cannot run
/// fails the test.
pub fn start() -> Option<Lab> {
    if let Some(reason) = missing() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "the lab cannot run under CI: {reason}");
        eprintln!("skipping lab test: {reason}");
        return None;
    }
    let mut config = LabConfig::new(env!("CARGO_BIN_EXE_svcnft-lab"));
    config.health_interval = Duration::from_millis(200);
    Some(Lab::up(config).expect("lab comes up"))
}

/// The source address the echo pod reports for a request from `ns` to `addr:port`.
pub fn seen(lab: &Lab, ns: &str, addr: impl Into<IpAddr>, port: u16) -> String {
    let response = lab.http_get_from(ns, addr.into(), port).unwrap_or_else(|e| panic!("GET from {ns}: {e}"));
    assert_eq!(response.status, 200, "{}", response.body);
    response.value("client_address").expect("echo body").to_string()
}

/// A policy of the lab's `policies/` directory.
pub fn policy(name: &str) -> Vec<PathBuf> {
    vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies").join(name)]
}
