//! The svcnft compiler: policy checks, node planning, the nftables object model,
//! rendering and the packet tracer. Every function here is pure.

pub mod check;
pub mod diagnostics;
pub mod policy;

pub use check::{check, Checked};
pub use diagnostics::{Diagnostic, Diagnostics, Severity, SourceFile};
