//! The proxy's health as the health endpoints report it (kube-proxy semantics).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Whether the rules follow the policy, shared by the sync loop and the servers.
#[derive(Debug)]
pub struct Status {
    sync_period: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    last_updated: Option<SystemTime>,
    /// The oldest change not yet applied.
    pending_since: Option<Instant>,
    /// The last sync applied the current policy.
    applied: bool,
}

/// One reading of [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub last_updated: Option<SystemTime>,
    pub healthy: bool,
}

impl Status {
    /// Starts with the initial sync pending.
    pub fn new(sync_period: Duration) -> Self {
        let inner = Inner { last_updated: None, pending_since: Some(Instant::now()), applied: false };
        Status { sync_period, inner: Mutex::new(inner) }
    }

    /// A change arrived; it is pending until a sync succeeds.
    pub fn change_pending(&self) {
        self.lock().pending_since.get_or_insert_with(Instant::now);
    }

    /// The policy is in the kernel.
    pub fn synced(&self) {
        let mut inner = self.lock();
        inner.last_updated = Some(SystemTime::now());
        inner.pending_since = None;
        inner.applied = true;
    }

    /// The policy could not be applied (invalid, or refused): not healthy until
    /// the next sync succeeds.
    pub fn failed(&self) {
        let mut inner = self.lock();
        inner.applied = false;
        inner.pending_since.get_or_insert_with(Instant::now);
    }

    /// Healthy when the policy is applied and no change has waited more than two
    /// sync periods.
    pub fn health(&self) -> Health {
        let inner = self.lock();
        let overdue = inner.pending_since.is_some_and(|t| t.elapsed() > 2 * self.sync_period);
        Health { last_updated: inner.last_updated, healthy: inner.applied && !overdue }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_applied_and_not_overdue() {
        let status = Status::new(Duration::from_millis(20));
        assert!(!status.health().healthy);
        status.synced();
        assert!(status.health().healthy);
        status.change_pending();
        assert!(status.health().healthy);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!status.health().healthy);
        status.synced();
        status.failed();
        assert!(!status.health().healthy);
        assert!(status.health().last_updated.is_some());
    }
}
