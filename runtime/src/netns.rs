//! Running code inside a named network namespace (`/run/netns/NAME`), on a thread
//! of its own, so the caller never leaves the namespace it is in.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Runs `f` on a new thread that has entered the network namespace `name`: sockets
/// and netlink opened there belong to it, and threads it starts inherit it.
pub fn in_namespace<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(format!("/run/netns/{name}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a namespace fd; the thread only changes its own netns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
