//! The svcnft runtime: the only stage with side effects.

pub mod sources;
