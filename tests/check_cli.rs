//! `svcnft check`: exit codes and where diagnostics go.

use std::process::Command;

fn svcnft(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_svcnft")).args(args).output().expect("runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (out.status.code(), text(out.stdout), text(out.stderr))
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("svcnft-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("scratch file");
    path
}

#[test]
fn valid_policy_exits_0() {
    let (code, stdout, stderr) = svcnft(&["check", "examples/source-ip-lab.svc"]);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (Some(0), "", ""));
}

#[test]
fn a_directory_is_one_policy_of_its_svc_files_in_name_order() {
    let dir = std::env::temp_dir().join(format!("svcnft-cli-{}-dir", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("10-nodes.svc"), "node n1 { address 10.0.0.1 }\n").expect("write");
    std::fs::write(dir.join("20-web.svc"), "service a/web { cluster-ip 10.96.0.1; port 80/tcp }\n").expect("write");
    std::fs::write(dir.join("30-web.svc"), "endpoints a/web { endpoint 10.1.0.1 node n1 }\n").expect("write");
    std::fs::write(dir.join("notes.txt"), "not a policy {").expect("write");
    let result = svcnft(&["check", dir.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(result, (Some(0), String::new(), String::new()));
}

#[test]
fn invalid_policy_exits_2_with_diagnostics_on_stderr() {
    let path = scratch("bad.svc", "node n1 { pod-cidr 10.1.0.1/24 }\n");
    let (code, stdout, stderr) = svcnft(&["check", path.to_str().expect("utf-8 path")]);
    std::fs::remove_file(&path).expect("cleanup");
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());
    assert_eq!(stderr.matches(": error: ").count(), 2, "{stderr}");
    assert!(stderr.starts_with(&format!("{}:1:6: error: ", path.display())), "{stderr}");
}

#[test]
fn warnings_keep_exit_0() {
    let path = scratch("warn.svc", "service a/b { cluster-ip 10.0.0.1; port 80/tcp target web }\n");
    let (code, _, stderr) = svcnft(&["check", path.to_str().expect("utf-8 path")]);
    std::fs::remove_file(&path).expect("cleanup");
    assert_eq!(code, Some(0));
    assert!(stderr.contains(": warning: "), "{stderr}");
}

#[test]
fn unreadable_policy_exits_1() {
    let (code, _, stderr) = svcnft(&["check", "no/such/file.svc"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no/such/file.svc"), "{stderr}");
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    assert_eq!(svcnft(&["check"]).0, Some(1));
    let (code, stdout, _) = svcnft(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("check"), "{stdout}");
}
