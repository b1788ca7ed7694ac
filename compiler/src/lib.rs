//! The svcnft compiler: policy checks, node planning, the nftables object model,
//! rendering and the packet tracer. Every function here is pure.

pub mod policy;
