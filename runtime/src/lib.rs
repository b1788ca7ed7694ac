//! The svcnft runtime: the only stage with side effects.
