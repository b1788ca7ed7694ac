//! nf_tables expressions: the kernel's rule vocabulary, encoded and decoded.

use std::time::Duration;

use super::attr::{self, Attrs, Writer};
use super::codec::{decode_data, encode_data, encode_value};
use super::objects::{Bytes, Data};
use super::Error;

/// A kernel register. Rules use the 32-bit registers so that concatenated
/// keys can be loaded component by component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg(pub u32);

impl Reg {
    pub const VERDICT: Reg = Reg(0);

    /// `NFT_REG32_00 + n`.
    pub const fn r32(n: u32) -> Reg {
        Reg(8 + n)
    }

    /// The kernel dumps a 32-bit register that starts a 128-bit one under
    /// the 128-bit number (`NFT_REG32_04` as `NFT_REG_2`); map it back.
    fn from_kernel(r: u32) -> Reg {
        match r {
            1..=4 => Reg::r32((r - 1) * 4),
            _ => Reg(r),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Link,
    Network,
    Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Mark,
    NfProto,
    L4Proto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKey {
    State,
    Status,
    Mark,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibResult {
    Oif,
    Oifname,
    AddrType,
}

/// `NFTA_FIB_F_*` flags.
pub mod fib_flags {
    pub const SADDR: u32 = 1;
    pub const DADDR: u32 = 2;
    pub const MARK: u32 = 4;
    pub const IIF: u32 = 8;
    pub const OIF: u32 = 16;
    pub const PRESENT: u32 = 32;
}

/// `NF_NAT_RANGE_*` flags the caller may set; the encoder adds the
/// address/port-specified bits from the registers given.
pub mod nat_flags {
    pub const PROTO_RANDOM: u32 = 4;
    pub const PERSISTENT: u32 = 8;
    pub const PROTO_RANDOM_FULLY: u32 = 16;
}
const NAT_MAP_IPS: u32 = 1;
const NAT_PROTO_SPECIFIED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// ICMP (ip) or ICMPv6 (ip6) unreachable with the given code.
    IcmpUnreach(u8),
    TcpReset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynsetOp {
    Add,
    Update,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Payload {
        dreg: Reg,
        base: PayloadBase,
        offset: u32,
        len: u32,
    },
    Meta {
        dreg: Reg,
        key: MetaKey,
    },
    MetaSet {
        key: MetaKey,
        sreg: Reg,
    },
    /// `data` is compared bytewise against the register, in its own byte order.
    Cmp {
        sreg: Reg,
        op: CmpOp,
        data: Bytes,
    },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Bytes,
        xor: Bytes,
    },
    /// With `dreg`, a map lookup (`Reg::VERDICT` for verdict maps).
    Lookup {
        set: String,
        sreg: Reg,
        dreg: Option<Reg>,
        invert: bool,
    },
    Immediate {
        dreg: Reg,
        data: Data,
    },
    Ct {
        dreg: Reg,
        key: CtKey,
    },
    Fib {
        dreg: Reg,
        result: FibResult,
        flags: u32,
    },
    /// `dreg = offset + (random or counter) % modulus`.
    Numgen {
        dreg: Reg,
        random: bool,
        modulus: u32,
        offset: u32,
    },
    Nat {
        kind: NatKind,
        family: super::Family,
        addr: Option<Reg>,
        port: Option<Reg>,
        flags: u32,
    },
    Masq {
        flags: u32,
    },
    Reject(RejectKind),
    Dynset {
        op: DynsetOp,
        set: String,
        sreg_key: Reg,
        sreg_data: Option<Reg>,
        timeout: Option<Duration>,
    },
    Counter,
    /// An expression this layer does not model, kept verbatim from a dump so
    /// that a rule holding it can still be compared and deleted.
    Raw {
        name: String,
        data: Vec<u8>,
    },
}

fn be32_of(v: Option<&[u8]>, what: &str) -> Result<u32, Error> {
    attr::be32(v.ok_or_else(|| Error::Malformed(format!("missing {what}")))?)
}

fn reg_of(v: Option<&[u8]>, what: &str) -> Result<Reg, Error> {
    be32_of(v, what).map(Reg::from_kernel)
}

fn opt_reg(v: Option<&[u8]>) -> Result<Option<Reg>, Error> {
    v.map(attr::be32).transpose().map(|r| r.map(Reg::from_kernel))
}

/// Collects one level of attributes into a small table indexed by type.
fn table(data: &[u8]) -> Result<[Option<&[u8]>; 16], Error> {
    let mut t = [None; 16];
    for a in Attrs::new(data) {
        let (ty, v) = a?;
        if let Some(slot) = t.get_mut(ty as usize) {
            *slot = Some(v);
        }
    }
    Ok(t)
}

fn index<T: Copy + PartialEq>(all: &[T], v: T) -> u32 {
    all.iter().position(|x| *x == v).expect("listed") as u32
}

fn pick<T: Copy>(all: &[T], code: u32, what: &str) -> Result<T, Error> {
    all.get(code as usize).copied().ok_or_else(|| Error::Malformed(format!("unsupported {what} {code}")))
}

const BASES: [PayloadBase; 3] = [PayloadBase::Link, PayloadBase::Network, PayloadBase::Transport];
const CMP_OPS: [CmpOp; 6] = [CmpOp::Eq, CmpOp::Neq, CmpOp::Lt, CmpOp::Lte, CmpOp::Gt, CmpOp::Gte];
const CT_KEYS: [CtKey; 4] = [CtKey::State, CtKey::State, CtKey::Status, CtKey::Mark];
const FIB_RESULTS: [FibResult; 4] = [FibResult::Oif, FibResult::Oif, FibResult::Oifname, FibResult::AddrType];
const DYNSET_OPS: [DynsetOp; 3] = [DynsetOp::Add, DynsetOp::Update, DynsetOp::Delete];

fn meta_code(k: MetaKey) -> u32 {
    match k {
        MetaKey::Mark => 3,
        MetaKey::NfProto => 15,
        MetaKey::L4Proto => 16,
    }
}

fn meta_key(code: u32) -> Result<MetaKey, Error> {
    match code {
        3 => Ok(MetaKey::Mark),
        15 => Ok(MetaKey::NfProto),
        16 => Ok(MetaKey::L4Proto),
        _ => Err(Error::Malformed(format!("unsupported meta key {code}"))),
    }
}

fn ct_code(k: CtKey) -> u32 {
    match k {
        CtKey::State => 0,
        CtKey::Status => 2,
        CtKey::Mark => 3,
    }
}

fn ct_key(code: u32) -> Result<CtKey, Error> {
    match code {
        1 => Err(Error::Malformed("unsupported ct key 1".into())),
        _ => pick(&CT_KEYS, code, "ct key"),
    }
}

fn fib_code(r: FibResult) -> u32 {
    match r {
        FibResult::Oif => 1,
        FibResult::Oifname => 2,
        FibResult::AddrType => 3,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn opt_ms(v: Option<&[u8]>) -> Result<Option<Duration>, Error> {
    Ok(v.map(attr::be64).transpose()?.filter(|&ms| ms != 0).map(Duration::from_millis))
}

impl Expr {
    pub(crate) fn name(&self) -> &str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } => "immediate",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Numgen { .. } => "numgen",
            Expr::Nat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Reject(_) => "reject",
            Expr::Dynset { .. } => "dynset",
            Expr::Counter => "counter",
            Expr::Raw { name, .. } => name,
        }
    }

    /// Writes `NFTA_EXPR_NAME` and `NFTA_EXPR_DATA`.
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.str(1, self.name());
        w.nest(2, |w| self.encode_data(w));
    }

    fn encode_data(&self, w: &mut Writer) {
        match self {
            Expr::Payload { dreg, base, offset, len } => {
                w.be32(1, dreg.0);
                w.be32(2, index(&BASES, *base));
                w.be32(3, *offset);
                w.be32(4, *len);
            }
            Expr::Meta { dreg, key } => {
                w.be32(1, dreg.0);
                w.be32(2, meta_code(*key));
            }
            Expr::MetaSet { key, sreg } => {
                w.be32(2, meta_code(*key));
                w.be32(3, sreg.0);
            }
            Expr::Cmp { sreg, op, data } => {
                w.be32(1, sreg.0);
                w.be32(2, index(&CMP_OPS, *op));
                w.nest(3, |w| encode_value(w, data));
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                w.be32(1, sreg.0);
                w.be32(2, dreg.0);
                w.be32(3, mask.len() as u32);
                w.nest(4, |w| encode_value(w, mask));
                w.nest(5, |w| encode_value(w, xor));
            }
            Expr::Lookup { set, sreg, dreg, invert } => {
                w.str(1, set);
                w.be32(2, sreg.0);
                if let Some(d) = dreg {
                    w.be32(3, d.0);
                }
                if *invert {
                    w.be32(5, 1);
                }
            }
            Expr::Immediate { dreg, data } => {
                w.be32(1, dreg.0);
                w.nest(2, |w| encode_data(w, data));
            }
            Expr::Ct { dreg, key } => {
                w.be32(1, dreg.0);
                w.be32(2, ct_code(*key));
            }
            Expr::Fib { dreg, result, flags } => {
                w.be32(1, dreg.0);
                w.be32(2, fib_code(*result));
                w.be32(3, *flags);
            }
            Expr::Numgen { dreg, random, modulus, offset } => {
                w.be32(1, dreg.0);
                w.be32(2, *modulus);
                w.be32(3, u32::from(*random));
                w.be32(4, *offset);
            }
            Expr::Nat { kind, family, addr, port, flags } => {
                w.be32(1, matches!(kind, NatKind::Dnat) as u32);
                w.be32(2, u32::from(family.code()));
                let mut f = *flags;
                if let Some(a) = addr {
                    w.be32(3, a.0);
                    f |= NAT_MAP_IPS;
                }
                if let Some(p) = port {
                    w.be32(5, p.0);
                    f |= NAT_PROTO_SPECIFIED;
                }
                if f != 0 {
                    w.be32(7, f);
                }
            }
            Expr::Masq { flags } => {
                if *flags != 0 {
                    w.be32(1, *flags);
                }
            }
            Expr::Reject(kind) => match kind {
                RejectKind::IcmpUnreach(code) => {
                    w.be32(1, 0);
                    w.u8(2, *code);
                }
                RejectKind::TcpReset => w.be32(1, 1),
            },
            Expr::Dynset { op, set, sreg_key, sreg_data, timeout } => {
                w.str(1, set);
                w.be32(3, index(&DYNSET_OPS, *op));
                w.be32(4, sreg_key.0);
                if let Some(d) = sreg_data {
                    w.be32(5, d.0);
                }
                if let Some(t) = timeout {
                    w.be64(6, ms(*t));
                }
            }
            Expr::Counter => {}
            Expr::Raw { data, .. } => w.buf.extend_from_slice(data),
        }
    }

    /// Decodes one `NFTA_LIST_ELEM` of a rule's expression list.
    pub(crate) fn decode(elem: &[u8]) -> Result<Expr, Error> {
        let mut name = None;
        let mut data: &[u8] = &[];
        for a in Attrs::new(elem) {
            match a? {
                (1, v) => name = Some(attr::str(v)?),
                (2, v) => data = v,
                _ => {}
            }
        }
        let name = name.ok_or_else(|| Error::Malformed("expression without name".into()))?;
        Ok(Self::decode_known(name, data).unwrap_or_else(|_| Expr::Raw { name: name.to_owned(), data: data.to_vec() }))
    }

    fn decode_known(name: &str, data: &[u8]) -> Result<Expr, Error> {
        let t = table(data)?;
        let value = |i: usize, what: &str| -> Result<Bytes, Error> {
            match decode_data(t[i].ok_or_else(|| Error::Malformed(format!("missing {what}")))?)? {
                Data::Value(v) => Ok(v),
                Data::Verdict(_) => Err(Error::Malformed(format!("{what} is a verdict"))),
            }
        };
        Ok(match name {
            "payload" => Expr::Payload {
                dreg: reg_of(t[1], "payload dreg")?,
                base: pick(&BASES, be32_of(t[2], "payload base")?, "payload base")?,
                offset: be32_of(t[3], "payload offset")?,
                len: be32_of(t[4], "payload len")?,
            },
            "meta" => {
                let key = meta_key(be32_of(t[2], "meta key")?)?;
                match t[1] {
                    Some(d) => Expr::Meta { dreg: Reg::from_kernel(attr::be32(d)?), key },
                    None => Expr::MetaSet { key, sreg: reg_of(t[3], "meta sreg")? },
                }
            }
            "cmp" => Expr::Cmp {
                sreg: reg_of(t[1], "cmp sreg")?,
                op: pick(&CMP_OPS, be32_of(t[2], "cmp op")?, "cmp op")?,
                data: value(3, "cmp data")?,
            },
            "bitwise" => {
                if t[6].map(attr::be32).transpose()?.unwrap_or(0) != 0 {
                    return Err(Error::Malformed("unsupported bitwise shift".into()));
                }
                Expr::Bitwise {
                    sreg: reg_of(t[1], "bitwise sreg")?,
                    dreg: reg_of(t[2], "bitwise dreg")?,
                    mask: value(4, "bitwise mask")?,
                    xor: value(5, "bitwise xor")?,
                }
            }
            "lookup" => Expr::Lookup {
                set: attr::string(t[1].unwrap_or_default())?,
                sreg: reg_of(t[2], "lookup sreg")?,
                dreg: opt_reg(t[3])?,
                invert: t[5].map(attr::be32).transpose()?.unwrap_or(0) & 1 != 0,
            },
            "immediate" => {
                Expr::Immediate { dreg: reg_of(t[1], "immediate dreg")?, data: decode_data(t[2].unwrap_or_default())? }
            }
            "ct" => Expr::Ct { dreg: reg_of(t[1], "ct dreg")?, key: ct_key(be32_of(t[2], "ct key")?)? },
            "fib" => Expr::Fib {
                dreg: reg_of(t[1], "fib dreg")?,
                result: match be32_of(t[2], "fib result")? {
                    0 => return Err(Error::Malformed("unsupported fib result 0".into())),
                    r => pick(&FIB_RESULTS, r, "fib result")?,
                },
                flags: be32_of(t[3], "fib flags")?,
            },
            "numgen" => Expr::Numgen {
                dreg: reg_of(t[1], "numgen dreg")?,
                modulus: be32_of(t[2], "numgen modulus")?,
                random: be32_of(t[3], "numgen type")? == 1,
                offset: t[4].map(attr::be32).transpose()?.unwrap_or(0),
            },
            "nat" => {
                let family = match be32_of(t[2], "nat family")? as i32 {
                    libc::AF_INET => super::Family::Ip,
                    libc::AF_INET6 => super::Family::Ip6,
                    f => return Err(Error::Malformed(format!("unsupported nat family {f}"))),
                };
                Expr::Nat {
                    kind: if be32_of(t[1], "nat type")? == 1 { NatKind::Dnat } else { NatKind::Snat },
                    family,
                    addr: opt_reg(t[3])?,
                    port: opt_reg(t[5])?,
                    flags: t[7].map(attr::be32).transpose()?.unwrap_or(0) & !(NAT_MAP_IPS | NAT_PROTO_SPECIFIED),
                }
            }
            "masq" => Expr::Masq { flags: t[1].map(attr::be32).transpose()?.unwrap_or(0) },
            "reject" => Expr::Reject(match be32_of(t[1], "reject type")? {
                1 => RejectKind::TcpReset,
                0 => RejectKind::IcmpUnreach(attr::u8(t[2].unwrap_or_default())?),
                k => return Err(Error::Malformed(format!("unsupported reject type {k}"))),
            }),
            "dynset" => Expr::Dynset {
                op: pick(&DYNSET_OPS, be32_of(t[3], "dynset op")?, "dynset op")?,
                set: attr::string(t[1].unwrap_or_default())?,
                sreg_key: reg_of(t[4], "dynset sreg")?,
                sreg_data: opt_reg(t[5])?,
                timeout: opt_ms(t[6])?,
            },
            "counter" => Expr::Counter,
            other => return Err(Error::Malformed(format!("unsupported expression {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{Family, Verdict};

    #[test]
    fn every_expression_round_trips() {
        let r = Reg::r32(2);
        let exprs = [
            Expr::Payload { dreg: r, base: PayloadBase::Transport, offset: 2, len: 2 },
            Expr::Meta { dreg: r, key: MetaKey::NfProto },
            Expr::MetaSet { key: MetaKey::Mark, sreg: r },
            Expr::Cmp { sreg: r, op: CmpOp::Gte, data: [1, 2].as_slice().into() },
            Expr::Bitwise {
                sreg: r,
                dreg: Reg::r32(3),
                mask: [255, 255, 0, 0].as_slice().into(),
                xor: [0; 4].as_slice().into(),
            },
            Expr::Lookup { set: "s".into(), sreg: r, dreg: None, invert: true },
            Expr::Immediate { dreg: Reg::VERDICT, data: Data::Verdict(Verdict::Goto("c".into())) },
            Expr::Ct { dreg: r, key: CtKey::Status },
            Expr::Fib { dreg: r, result: FibResult::Oif, flags: fib_flags::SADDR | fib_flags::IIF },
            Expr::Numgen { dreg: r, random: false, modulus: 7, offset: 3 },
            Expr::Nat {
                kind: NatKind::Snat,
                family: Family::Ip6,
                addr: Some(Reg::r32(0)),
                port: None,
                flags: nat_flags::PERSISTENT,
            },
            Expr::Masq { flags: nat_flags::PROTO_RANDOM },
            Expr::Reject(RejectKind::TcpReset),
            Expr::Reject(RejectKind::IcmpUnreach(4)),
            Expr::Dynset {
                op: DynsetOp::Add,
                set: "m".into(),
                sreg_key: r,
                sreg_data: Some(Reg::r32(4)),
                timeout: Some(Duration::from_secs(60)),
            },
            Expr::Counter,
        ];
        for e in exprs {
            let mut buf = Vec::new();
            e.encode(&mut Writer { buf: &mut buf });
            assert_eq!(Expr::decode(&buf).unwrap(), e);
        }
    }

    #[test]
    fn unmodelled_expressions_are_kept_verbatim() {
        let mut buf = Vec::new();
        let mut w = Writer { buf: &mut buf };
        w.str(1, "meta");
        w.nest(2, |w| {
            w.be32(1, 8);
            w.be32(2, 6);
        });
        let e = Expr::decode(&buf).unwrap();
        assert!(matches!(&e, Expr::Raw { name, .. } if name == "meta"));
        let mut again = Vec::new();
        e.encode(&mut Writer { buf: &mut again });
        assert_eq!(again, buf);
    }
}
