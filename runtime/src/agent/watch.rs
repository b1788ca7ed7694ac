//! Watching the policy paths.
//!
//! Files are watched through their directory, so an editor's atomic rename (a
//! new inode replacing the old) is seen like an in-place write. Events only
//! wake the sync loop; it debounces and rereads everything, so a partial write
//! seen early is simply followed by the event of its completion.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::Event;

/// Keeps the watches alive; dropping it stops them.
pub struct PolicyWatcher {
    _watcher: RecommendedWatcher,
}

impl PolicyWatcher {
    /// Sends [`Event::Changed`] whenever a policy file may have changed.
    pub fn start(paths: &[PathBuf], events: Sender<Event>) -> notify::Result<Self> {
        let targets: Vec<Target> = paths.iter().map(|p| Target::of(p)).collect();
        let relevant = targets.clone();
        let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) if changes(&event.kind) && event.paths.iter().any(|p| relevant.iter().any(|t| t.covers(p))) => {
                let _ = events.send(Event::Changed { settled: settled(&event.kind) });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "policy watch error"),
        })?;
        for target in &targets {
            watcher.watch(target.watched(), RecursiveMode::NonRecursive)?;
        }
        Ok(PolicyWatcher { _watcher: watcher })
    }
}

/// Reads (ours included) are not changes.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A file closed after writing, renamed into place or removed: a finished change.
fn settled(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

/// One POLICY argument: a file (watched through its directory) or a directory.
#[derive(Debug, Clone)]
enum Target {
    File { file: PathBuf, dir: PathBuf },
    Dir(PathBuf),
}

impl Target {
    fn of(path: &Path) -> Target {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if path.is_dir() {
            return Target::Dir(path);
        }
        let dir = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        Target::File { file: path, dir }
    }

    fn watched(&self) -> &Path {
        match self {
            Target::File { dir, .. } | Target::Dir(dir) => dir,
        }
    }

    fn covers(&self, path: &Path) -> bool {
        match self {
            Target::File { file, .. } => path == file,
            Target::Dir(dir) => path.parent() == Some(dir) && path.extension().is_some_and(|e| e == "svc"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn atomic_rename_and_directory_edits_are_seen_and_reads_are_not() {
        let dir = std::env::temp_dir().join(format!("svcnft-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        let file = dir.join("p.svc");
        std::fs::write(&file, "# 1").unwrap();
        let (tx, rx) = mpsc::channel();
        let _watcher = PolicyWatcher::start(&[file.clone(), dir.join("d")], tx).unwrap();
        // Every event until the first settled one; `None` if none comes.
        let until_settled = || {
            let mut seen = Vec::new();
            while let Ok(event) = rx.recv_timeout(Duration::from_secs(2)) {
                seen.push(event);
                if event == (Event::Changed { settled: true }) {
                    return Some(seen);
                }
            }
            None
        };
        let drain = || while rx.recv_timeout(Duration::from_millis(100)).is_ok() {};

        std::fs::write(dir.join("p.svc.tmp"), "# 2").unwrap();
        std::fs::rename(dir.join("p.svc.tmp"), &file).unwrap();
        assert!(until_settled().is_some(), "an atomic rename over the file is a settled change");
        drain();
        std::fs::read_to_string(&file).unwrap();
        std::fs::write(dir.join("other.txt"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "reads and other files are ignored");

        // A write in place: unsettled while the file is open, settled once closed.
        let mut open = std::fs::OpenOptions::new().write(true).truncate(true).open(&file).unwrap();
        std::io::Write::write_all(&mut open, b"# 3").unwrap();
        std::io::Write::flush(&mut open).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(2)),
            Ok(Event::Changed { settled: false }),
            "a write in progress"
        );
        drop(open);
        assert!(until_settled().is_some(), "closing the written file settles the change");
        drain();

        std::fs::write(dir.join("d/new.svc"), "# 3").unwrap();
        assert!(until_settled().is_some(), "a new file in a watched directory");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
