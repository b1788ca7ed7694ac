//! The svcnft runtime: the only stage with side effects.

pub mod netlink;
#[cfg(feature = "testing")]
pub mod testns;
