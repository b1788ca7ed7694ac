//! The svcnft runtime: the only stage with side effects.

pub mod netlink;
pub mod sources;
#[cfg(feature = "testing")]
pub mod testns;
