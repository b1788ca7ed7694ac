//! The svcnft runtime: the only stage with side effects. It reads policy files,
//! and applies compiled rulesets to the kernel over netlink.

pub mod agent;
pub mod apply;
pub mod kernel;
pub mod netlink;
pub mod netns;
pub mod sources;
#[cfg(feature = "testing")]
pub mod testns;
