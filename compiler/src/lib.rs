//! The svcnft compiler: policy checks, node planning, the nftables object model,
//! rendering, diff and the packet tracer. Every function here is pure.

pub mod check;
pub mod diagnostics;
pub mod diff;
pub mod lower;
pub mod plan;
pub mod policy;
pub mod render;
pub mod ruleset;
pub mod synthetic;
pub mod trace;

pub use check::{check, Checked};
pub use diagnostics::{Diagnostic, Diagnostics, Severity, SourceFile};
pub use plan::{plan, NodePlan, PlanError};
pub use policy::Policy;
pub use ruleset::Ruleset;

/// Plans and lowers a checked policy for one node.
pub fn compile(policy: &Policy, node: &str) -> Result<(NodePlan, Ruleset), PlanError> {
    let plan = plan::plan(policy, node)?;
    let ruleset = lower::lower(&plan);
    Ok((plan, ruleset))
}
