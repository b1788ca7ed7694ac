//! Kernel objects: what nf_tables stores, one level below the compiler's model.

use std::time::Duration;

use smallvec::SmallVec;

use super::attr::udata;
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
    /// nft's plain `integer` (4 bytes, host byte order), e.g. what `numgen` draws.
    Integer,
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
            KeyType::Integer => 4,
        }
    }

    pub(crate) fn from_id(id: u32) -> Option<Self> {
        [
            KeyType::Ipv4Addr,
            KeyType::Ipv6Addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Mark,
            KeyType::Integer,
        ]
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
            KeyType::Mark | KeyType::Integer => 4,
        }
    }

    pub(crate) fn byteorder(self) -> u32 {
        match self {
            KeyType::Mark | KeyType::Integer => BYTEORDER_HOST,
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

/// nft's description of `typeof numgen random mod 2 : ADDR daddr . th dport`
/// (a map from a drawn number to an address and port of `addr`'s family), as
/// nft 1.0.6 writes it: each expression as libnftnl's expression id and the
/// expression's own records.
pub fn numgen_to_address_port_typeof(addr: KeyType) -> Vec<u8> {
    const EXPR_PAYLOAD: u32 = 7;
    const EXPR_CONCAT: u32 = 13;
    const EXPR_NUMGEN: u32 = 23;
    const NUMGEN_RANDOM: u32 = 1;
    // nft's protocol descriptions and their header fields.
    const PROTO_IP: u32 = 12;
    const IP_DADDR: u32 = 12;
    const PROTO_IP6: u32 = 13;
    const IP6_DADDR: u32 = 9;
    const PROTO_TH: u32 = 11;
    const TH_DPORT: u32 = 2;

    let record = |ty: u8, value: &[u8]| {
        let mut out = Vec::new();
        udata::put(&mut out, ty, value);
        out
    };
    let word = |v: u32| v.to_ne_bytes();
    let expr = |id: u32, records: Vec<u8>| [record(0, &word(id)), record(1, &records)].concat();
    let payload =
        |proto: u32, field: u32| expr(EXPR_PAYLOAD, [record(0, &word(proto)), record(1, &word(field))].concat());
    let numgen =
        expr(EXPR_NUMGEN, [record(0, &word(NUMGEN_RANDOM)), record(1, &word(2)), record(2, &word(0))].concat());
    let address = match addr {
        KeyType::Ipv6Addr => payload(PROTO_IP6, IP6_DADDR),
        _ => payload(PROTO_IP, IP_DADDR),
    };
    let data = expr(EXPR_CONCAT, [record(0, &address), record(1, &payload(PROTO_TH, TH_DPORT))].concat());
    // Records 3 and 4 describe key and data; 6 says the data are no intervals.
    [record(3, &numgen), record(4, &data), record(6, &word(0))].concat()
}

/// Concatenates key components as the kernel lays them out in registers:
/// each padded with zeros to a multiple of 4 bytes.
pub fn concat(parts: &[&[u8]]) -> Bytes {
    let mut out = Bytes::new();
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
    /// nft's description of a `typeof` declaration (its userdata records for
    /// the key's and data's expressions), kept by the kernel as opaque bytes:
    /// `nft list` needs it to print a key whose type nft has no name for.
    pub typeof_description: Option<Vec<u8>>,
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

/// Raw value bytes, inline up to an IPv6 address with a protocol and a port:
/// a table read back holds hundreds of thousands of them.
pub type Bytes = SmallVec<[u8; 24]>;

/// A register or element value: either a verdict or raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    Verdict(Verdict),
    Value(Bytes),
}

/// A set or map element. Keys are raw bytes laid out as the kernel compares
/// them (see [`concat`]); an interval set takes ranges as a start element and
/// an `interval_end` element one past the range.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Bytes,
    pub interval_end: bool,
    pub data: Option<Data>,
    pub timeout: Option<Duration>,
    pub comment: Option<String>,
}

impl Element {
    pub fn new(key: impl Into<Bytes>) -> Self {
        Element { key: key.into(), ..Element::default() }
    }

    pub fn with_data(key: impl Into<Bytes>, data: Data) -> Self {
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
        assert_eq!(concat(&[&[10, 0, 0, 1], &[6], &[0, 80]]).as_slice(), [10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
    }

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    /// The userdata nft 1.0.6 sends for `typeof numgen random mod 2 : ip daddr . th dport`
    /// (and `ip6 daddr`), from `nft --debug=mnl`, after the two byte-order records.
    #[test]
    fn numgen_typeof_is_what_nft_writes() {
        let common = "03 1a 00 04 17 00 00 00 01 12 00 04 01 00 00 00 01 04 02 00 00 00 02 04 00 00 00 00 \
                      04 34 00 04 0d 00 00 00 01 2c 00 14 00 04 07 00 00 00 01 0c";
        let tail = "01 14 00 04 07 00 00 00 01 0c 00 04 0b 00 00 00 01 04 02 00 00 00 06 04 00 00 00 00";
        let ip = hex(&format!("{common} 00 04 0c 00 00 00 01 04 0c 00 00 00 {tail}"));
        let ip6 = hex(&format!("{common} 00 04 0d 00 00 00 01 04 09 00 00 00 {tail}"));
        assert_eq!(numgen_to_address_port_typeof(KeyType::Ipv4Addr), ip);
        assert_eq!(numgen_to_address_port_typeof(KeyType::Ipv6Addr), ip6);
    }
}
