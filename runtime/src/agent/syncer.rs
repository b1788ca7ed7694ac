//! One node's sync: policy files → checked policy → plan and ruleset → one
//! batch against the committed state in memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use svcnft_compiler::check::Incremental;
use svcnft_compiler::lower::Lowering;
use svcnft_compiler::plan::{HealthCheck, Planning};
use svcnft_compiler::{NodePlan, PlanError, Ruleset, SourceFile};

use super::conntrack::{remove_flows, udp_services_to_clean};
use super::metrics::{Metrics, SyncKind};
use super::state::Status;
use crate::apply::{Applier, ApplyError, ApplyReport};
use crate::sources::{read_policy, ReadError};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the policy has {errors} error(s); the last good ruleset stays")]
    Invalid { errors: usize },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no valid policy has been read yet")]
    NoPolicy,
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The policy as last compiled successfully.
struct Compiled {
    sources: Vec<SourceFile>,
    plan: NodePlan,
    /// Shared with the applier, which keeps it as the committed state.
    ruleset: Arc<Ruleset>,
}

/// Keeps one node's rules equal to its policy.
pub struct Syncer {
    paths: Vec<PathBuf>,
    node: String,
    applier: Applier,
    /// The parses of the last files read: after an edit, only the items whose text
    /// changed are parsed again.
    front: Incremental,
    /// Planned services kept between syncs: an edit plans only the services it changed.
    planning: Planning,
    /// Lowered ports kept between syncs: an edit lowers only what it changed.
    lowering: Lowering,
    good: Option<Compiled>,
    /// The kernel holds `good` as far as we know (no failed apply since).
    in_sync: bool,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

impl Syncer {
    pub fn new(
        paths: Vec<PathBuf>,
        node: String,
        applier: Applier,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Syncer {
            paths,
            node,
            applier,
            front: Incremental::default(),
            planning: Planning::default(),
            lowering: Lowering::default(),
            good: None,
            in_sync: false,
            status,
            metrics,
        }
    }

    /// The plan of the last good policy.
    pub fn plan(&self) -> Option<&NodePlan> {
        self.good.as_ref().map(|c| &c.plan)
    }

    /// The health-check node ports of the last good policy.
    pub fn health_checks(&self) -> &[HealthCheck] {
        self.plan().map_or(&[], |p| &p.health_checks)
    }

    /// A change arrived and waits for the next reload.
    pub fn change_pending(&self) {
        self.status.change_pending();
    }

    /// Reads, checks and compiles the policy and applies the difference. An
    /// invalid policy changes nothing in the kernel.
    pub fn reload(&mut self) -> Result<ApplyReport, SyncError> {
        let started = Instant::now();
        let result = read_policy(&self.paths).map_err(SyncError::from).and_then(|files| {
            // The same text again (a touch, a second event of one save): the kernel
            // already holds it, and checking 10k services costs far more than reading.
            if self.in_sync && self.good.as_ref().is_some_and(|g| g.sources == files) {
                return Ok(ApplyReport { operations: 0, messages: 0, retries: 0, elapsed: started.elapsed() });
            }
            let compiled = self.compile(files)?;
            let report = self.applier.apply(compiled.ruleset.clone())?;
            // After the commit: from now on the rules send new flows right.
            let stale = udp_services_to_clean(self.good.as_ref().map(|g| &g.plan), &compiled.plan);
            self.good = Some(compiled);
            match remove_flows(&stale) {
                Ok(0) => {}
                Ok(n) => tracing::info!(flows = n, "removed stale UDP flows"),
                Err(e) => tracing::warn!(error = %e, "cannot remove stale UDP flows"),
            }
            Ok(report)
        });
        self.record(SyncKind::Partial, started, result)
    }

    /// Repairs what another writer changed, if the generation moved without us.
    pub fn repair(&mut self) -> Result<Option<ApplyReport>, SyncError> {
        if self.good.is_none() || !self.applier.generation_moved()? {
            return Ok(None);
        }
        self.reconcile().map(Some)
    }

    /// Reads our tables back and applies the last good ruleset over them.
    pub fn reconcile(&mut self) -> Result<ApplyReport, SyncError> {
        let started = Instant::now();
        let Some(good) = &self.good else {
            return Err(SyncError::NoPolicy);
        };
        let result =
            self.applier.reread().and_then(|()| self.applier.apply(good.ruleset.clone())).map_err(SyncError::from);
        self.record(SyncKind::Full, started, result)
    }

    /// Removes svcnft's tables.
    pub fn cleanup(&mut self) -> Result<ApplyReport, ApplyError> {
        self.applier.cleanup()
    }

    fn compile(&mut self, files: Vec<SourceFile>) -> Result<Compiled, SyncError> {
        let checked = self.front.check(&files).map_err(|diagnostics| {
            tracing::error!("invalid policy; keeping the last good ruleset\n{}", diagnostics.render(&files));
            SyncError::Invalid { errors: diagnostics.errors() }
        })?;
        if !checked.warnings.is_empty() {
            tracing::warn!("policy warnings\n{}", checked.warnings.render(&files));
        }
        let plan = self.planning.plan(&checked.policy, &self.node)?;
        let ruleset = Arc::new(self.lowering.lower(&plan));
        Ok(Compiled { sources: files, plan, ruleset })
    }

    fn record(
        &mut self,
        kind: SyncKind,
        started: Instant,
        result: Result<ApplyReport, SyncError>,
    ) -> Result<ApplyReport, SyncError> {
        let elapsed = started.elapsed();
        self.in_sync = match &result {
            Ok(_) => true,
            Err(SyncError::Apply(_)) => false,
            Err(_) => self.in_sync,
        };
        match (&result, &self.good) {
            (Ok(report), Some(good)) => {
                self.metrics.synced(kind, elapsed, &good.plan, &good.ruleset);
                self.status.synced();
                tracing::info!(
                    sync = ?kind,
                    operations = report.operations,
                    messages = report.messages,
                    retries = report.retries,
                    commit_us = report.elapsed.as_micros() as u64,
                    total_us = elapsed.as_micros() as u64,
                    "synced"
                );
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                match e {
                    SyncError::Invalid { errors } => self.metrics.invalid(*errors),
                    _ => self.metrics.failed(),
                }
                self.status.failed();
                tracing::error!(sync = ?kind, error = %e, "sync failed");
            }
        }
        result
    }
}
