//! The svcnft compiler: policy checks, node planning, the nftables object model,
//! rendering and the packet tracer. Every function here is pure.

pub mod lower;
pub mod plan;
pub mod policy;
pub mod render;
pub mod ruleset;
pub mod trace;

pub use plan::{plan, NodePlan, PlanError};
pub use policy::Policy;
pub use ruleset::Ruleset;

/// Plans and lowers a checked policy for one node.
pub fn compile(policy: &Policy, node: &str) -> Result<(NodePlan, Ruleset), PlanError> {
    let plan = plan::plan(policy, node)?;
    let ruleset = lower::lower(&plan);
    Ok((plan, ruleset))
}
