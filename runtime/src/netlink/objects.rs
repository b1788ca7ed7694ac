//! Kernel objects: what nf_tables stores, one level below the compiler's model.

use std::time::Duration;

use super::expr::Expr;

/// Address family of a table; svcnft uses one table per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub(crate) fn code(self) -> u8 {
        match self {
            Family::Ip => libc::AF_INET as u8,
            Family::Ip6 => libc::AF_INET6 as u8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: the kernel calls it from a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
}

/// nft's datatypes for set keys and map data. The ids, lengths and byte
/// orders must be nft's own, or `nft list` misprints the elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    Mark,
}

/// nft's TYPE_BITS: concatenated type ids are packed 6 bits per component.
const TYPE_BITS: u32 = 6;
pub(crate) const BYTEORDER_HOST: u32 = 1;
pub(crate) const BYTEORDER_BIG: u32 = 2;

impl KeyType {
    pub(crate) fn id(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::InetProto => 12,
            KeyType::InetService => 13,
            KeyType::Mark => 19,
        }
    }

    pub(crate) fn from_id(id: u32) -> Option<Self> {
        [KeyType::Ipv4Addr, KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService, KeyType::Mark]
            .into_iter()
            .find(|t| t.id() == id)
    }

    /// Length in bytes of one value, before register padding.
    pub fn byte_len(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
            KeyType::Mark => 4,
        }
    }

    pub(crate) fn byteorder(self) -> u32 {
        match self {
            KeyType::Mark => BYTEORDER_HOST,
            _ => BYTEORDER_BIG,
        }
    }

    /// The kernel-side type id and length of a (possibly concatenated) key.
    /// Concatenation components each occupy whole 32-bit registers.
    pub(crate) fn encode_concat(types: &[KeyType]) -> (u32, u32) {
        match types {
            [one] => (one.id(), one.byte_len()),
            _ => types
                .iter()
                .fold((0, 0), |(id, len), t| ((id << TYPE_BITS) | t.id(), len + t.byte_len().next_multiple_of(4))),
        }
    }

    pub(crate) fn decode_concat(mut id: u32) -> Option<Vec<KeyType>> {
        let mut out = Vec::new();
        while id != 0 {
            out.push(KeyType::from_id(id & ((1 << TYPE_BITS) - 1))?);
            id >>= TYPE_BITS;
        }
        out.reverse();
        (!out.is_empty()).then_some(out)
    }
}

/// Concatenates key components as the kernel lays them out in registers:
/// each padded with zeros to a multiple of 4 bytes.
pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// Set flags that the caller chooses; `map` and `concat` follow from the
/// set's shape and are added by the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetFlags {
    pub constant: bool,
    pub interval: bool,
    pub timeout: bool,
    /// Updatable from the packet path (`dynset`), nft's `dynamic`.
    pub dynamic: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetData {
    Verdict,
    Value(Vec<KeyType>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: Vec<KeyType>,
    pub data: Option<SetData>,
    pub flags: SetFlags,
    /// Maximum element count; nft gives dynamic sets 65535 by default.
    pub size: Option<u32>,
    pub timeout: Option<Duration>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

/// A register or element value: either a verdict or raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    Verdict(Verdict),
    Value(Vec<u8>),
}

/// A set or map element. Keys are raw bytes laid out as the kernel compares
/// them (see [`concat`]); an interval set takes ranges as a start element and
/// an `interval_end` element one past the range.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Vec<u8>,
    pub interval_end: bool,
    pub data: Option<Data>,
    pub timeout: Option<Duration>,
    pub comment: Option<String>,
}

impl Element {
    pub fn new(key: Vec<u8>) -> Self {
        Element { key, ..Element::default() }
    }

    pub fn with_data(key: Vec<u8>, data: Data) -> Self {
        Element { data: Some(data), ..Element::new(key) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// Assigned by the kernel; read back, and required to replace or delete.
    pub handle: Option<u64>,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_types_pack_like_nft() {
        let key = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
        assert_eq!(KeyType::encode_concat(&key), (0x730d, 12));
        assert_eq!(KeyType::decode_concat(0x730d).unwrap(), key);
        assert_eq!(KeyType::encode_concat(&[KeyType::Ipv6Addr]), (8, 16));
    }

    #[test]
    fn concat_pads_components_to_registers() {
        assert_eq!(concat(&[&[10, 0, 0, 1], &[6], &[0, 80]]), [10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
    }
}
