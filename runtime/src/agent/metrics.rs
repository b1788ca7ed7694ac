//! The agent's Prometheus metrics.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use svcnft_compiler::plan::{ExternalRoute, Refusal, Route};
use svcnft_compiler::{NodePlan, Ruleset};

/// Which sync a duration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The kernel state was read back and the whole ruleset reconciled.
    Full,
    /// The policy changed: only the difference was sent.
    Partial,
}

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric of the agent, registered once.
pub struct Metrics {
    registry: Registry,
    full: Histogram,
    partial: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    pending: Gauge,
    failures: Counter,
    policy_applied: Gauge,
    policy_errors: Gauge,
    rules: Gauge,
    chains: Gauge,
    elements: Gauge,
    no_local_endpoints: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let mut m = Metrics {
            registry: Registry::with_prefix("svcnft"),
            full: buckets(),
            partial: buckets(),
            last_sync: Gauge::default(),
            pending: Gauge::default(),
            failures: Counter::default(),
            policy_applied: Gauge::default(),
            policy_errors: Gauge::default(),
            rules: Gauge::default(),
            chains: Gauge::default(),
            elements: Gauge::default(),
            no_local_endpoints: Family::default(),
        };
        let r = &mut m.registry;
        r.register("sync_full_duration_seconds", "Full syncs: read-back and reconcile", m.full.clone());
        r.register("sync_partial_duration_seconds", "Syncs of a policy change", m.partial.clone());
        r.register("last_sync_timestamp_seconds", "When the rules last matched the policy", m.last_sync.clone());
        r.register("pending_changes", "Policy changes not yet applied", m.pending.clone());
        r.register("sync_failures", "Syncs that failed", m.failures.clone());
        r.register("policy_applied", "1 when the current policy is in the kernel", m.policy_applied.clone());
        r.register("policy_errors", "Errors in the current policy", m.policy_errors.clone());
        r.register("rules", "Rules in svcnft's tables", m.rules.clone());
        r.register("chains", "Chains in svcnft's tables", m.chains.clone());
        r.register("set_elements", "Set and map elements in svcnft's tables", m.elements.clone());
        r.register(
            "services_without_local_endpoints",
            "Services with a Local traffic policy and no local endpoint",
            m.no_local_endpoints.clone(),
        );
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn pending(&self, changes: i64) {
        self.pending.set(changes);
    }

    pub(crate) fn synced(&self, kind: SyncKind, elapsed: Duration, plan: &NodePlan, ruleset: &Ruleset) {
        let histogram = match kind {
            SyncKind::Full => &self.full,
            SyncKind::Partial => &self.partial,
        };
        histogram.observe(elapsed.as_secs_f64());
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
        self.pending.set(0);
        self.policy_applied.set(1);
        self.policy_errors.set(0);
        let chains = ruleset.tables.iter().flat_map(|t| &t.chains);
        self.chains.set(chains.clone().count() as i64);
        self.rules.set(chains.map(|c| c.rules.len() as i64).sum());
        self.elements.set(ruleset.tables.iter().flat_map(|t| &t.sets).map(|s| s.elements.len() as i64).sum());
        let (internal, external) = without_local_endpoints(plan);
        self.no_local_endpoints.get_or_create(&vec![("traffic_policy", "internal")]).set(internal as i64);
        self.no_local_endpoints.get_or_create(&vec![("traffic_policy", "external")]).set(external as i64);
    }

    /// The policy is invalid: `errors` diagnostics of severity error.
    pub(crate) fn invalid(&self, errors: usize) {
        self.policy_errors.set(errors as i64);
        self.policy_applied.set(0);
    }

    pub(crate) fn failed(&self) {
        self.failures.inc();
        self.policy_applied.set(0);
    }
}

/// Services whose Local internal / external traffic policy finds no endpoint here.
fn without_local_endpoints(plan: &NodePlan) -> (usize, usize) {
    let (mut internal, mut external) = (BTreeSet::new(), BTreeSet::new());
    for port in plan.families.iter().flat_map(|f| &f.ports) {
        if port.internal == Route::Refuse(Refusal::Drop) {
            internal.insert(&port.id.service);
        }
        if let Some(ExternalRoute::Chain(chain)) = port.external {
            if chain.short_circuit && port.local_endpoints.is_empty() {
                external.insert(&port.id.service);
            }
        }
    }
    (internal.len(), external.len())
}
