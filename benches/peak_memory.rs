//! Peak memory (max RSS) and wall time of `svcnft compile` on generated policy
//! files of 100 to 100k services, measured by GNU time around the release binary.
//!
//! Needs `/usr/bin/time` (Debian package `time`). Run: `cargo bench --bench peak_memory`

use std::process::Command;

use svcnft_compiler::synthetic::{policy_text, Shape};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("svcnft compile --node node-0 (10 endpoints per service, 50 nodes)");
    println!("{:>9} {:>12} {:>10} {:>12}", "services", "policy MiB", "wall ms", "max RSS MiB");
    for services in [100, 1_000, 10_000, 100_000] {
        let path = std::env::temp_dir().join(format!("svcnft-bench-{}-{services}.svc", std::process::id()));
        let text = policy_text(Shape { services, ..Shape::LARGE }, 0);
        std::fs::write(&path, &text).expect("write the policy");
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%e %M", env!("CARGO_BIN_EXE_svcnft"), "compile"])
            .arg(&path)
            .args(["--node", "node-0"])
            .output()
            .expect("/usr/bin/time runs");
        std::fs::remove_file(&path).expect("remove the policy");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // GNU time writes its line last on stderr: seconds, then KiB.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut fields = stderr.lines().last().unwrap_or_default().split_whitespace();
        let seconds: f64 = fields.next().and_then(|f| f.parse().ok()).expect("elapsed seconds");
        let kib: f64 = fields.next().and_then(|f| f.parse().ok()).expect("max RSS in KiB");
        println!(
            "{services:>9} {:>12.1} {:>10.0} {:>12.1}",
            text.len() as f64 / (1 << 20) as f64,
            seconds * 1e3,
            kib / 1024.0
        );
    }
}
