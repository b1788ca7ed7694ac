//! The nf_tables netlink layer: kernel objects, their wire encoding, atomic
//! batches checked against the ruleset generation, and table read-back.
//!
//! The codec is our own rather than a typed netlink crate's: nf_tables
//! messages are flat attribute trees, most of the expressions we need are
//! untyped in those crates, and one code path that encodes and decodes keeps
//! read-back of large tables fast and every expression round-trippable.

mod attr;
mod batch;
mod codec;
mod conn;
mod conntrack;
mod expr;
mod objects;

pub use batch::Batch;
pub use conn::{Conn, TableState};
pub use conntrack::{Conntrack, Flow, Tuple};
pub use expr::{
    fib_flags, nat_flags, CmpOp, CtKey, DynsetOp, Expr, FibResult, MetaKey, NatKind, PayloadBase, Reg, RejectKind,
};
pub use objects::{
    concat, numgen_to_address_port_typeof, BaseChain, Bytes, Chain, ChainType, Data, Element, Family, Hook, KeyType,
    Policy, Rule, Set, SetData, SetFlags, Table, Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("permission denied: nf_tables needs CAP_NET_ADMIN")]
    PermissionDenied,
    #[error("the ruleset changed since its generation was read; recompute and retry")]
    GenerationChanged,
    #[error("kernel rejected operation {index} ({op}): {source}")]
    Rejected { index: usize, op: String, source: std::io::Error },
    #[error("kernel error: {0}")]
    Kernel(std::io::Error),
    #[error("malformed netlink message: {0}")]
    Malformed(String),
}
