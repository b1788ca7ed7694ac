//! Throwaway network namespaces for tests that talk to the real kernel.
//!
//! Each [`TestNs`] is a named namespace (`/run/netns/<name>`) removed on drop,
//! even when the test panics. Code runs inside it on a dedicated thread that
//! has joined the namespace, so the test process itself never touches the
//! host's network namespace.

use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether kernel tests can run here (root, `ip` and `nft` available).
///
/// Under `CI=true` a test that cannot run must fail, so this panics there;
/// elsewhere it prints why and returns `false` so the test can skip.
pub fn kernel_tests_enabled() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tool = |t: &str| Command::new(t).arg("--version").output().is_ok();
    let reason = if !root {
        Some("not root")
    } else if !tool("nft") {
        Some("nft not installed")
    } else if !tool("ip") {
        Some("iproute2 not installed")
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("kernel test cannot run under CI: {r}")
        }
        Some(r) => {
            eprintln!("skipping kernel test: {r}");
            false
        }
    }
}

/// A named network namespace that exists for the lifetime of the value.
pub struct TestNs {
    name: String,
}

impl TestNs {
    /// Creates `svcnft-t-<pid>-<n>`.
    pub fn new() -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("svcnft-t-{}-{n}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(TestNs { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread that has entered the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        crate::netns::in_namespace(&self.name, f)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip").args(["netns", "exec", &self.name, program]).args(args).output()
    }

    /// Runs `nft` with `args` and stdin `input` inside the namespace,
    /// returning stdout, or stderr as the error.
    pub fn nft(&self, args: &[&str], input: Option<&str>) -> io::Result<String> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.unwrap_or_default().as_bytes())?;
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
