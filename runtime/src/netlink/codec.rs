//! Message framing and the encoding of kernel objects into nf_tables
//! attributes, and back.

use std::time::Duration;

use super::attr::{self, udata, Attrs, Writer};
use super::expr::Expr;
use super::objects::*;
use super::Error;

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;

/// `NFT_MSG_*` message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum Msg {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    GetChain = 4,
    DelChain = 5,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    NewSet = 9,
    GetSet = 10,
    DelSet = 11,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
    GetGen = 16,
}

pub(crate) const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Starts a message (nlmsghdr + nfgenmsg); finish it with [`end_msg`].
pub(crate) fn begin_msg(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

pub(crate) fn end_msg(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub(crate) fn nft_type(m: Msg) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m as u16
}

/// One received netlink message.
pub(crate) struct RawMsg<'a> {
    pub(crate) ty: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

impl RawMsg<'_> {
    /// The attributes after the nfgenmsg header.
    pub(crate) fn attrs(&self) -> &[u8] {
        self.payload.get(NFGENMSG_LEN..).unwrap_or_default()
    }

    /// The nf_tables message type, if this is one.
    pub(crate) fn nft(&self) -> Option<u16> {
        (self.ty >> 8 == NFNL_SUBSYS_NFTABLES).then_some(self.ty & 0xff)
    }
}

pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<RawMsg<'_>, Error>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(Error::Malformed(format!("message length {len}"))));
        }
        let msg = RawMsg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some(Ok(msg))
    })
}

const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;

/// Raw bytes as a data attribute's value (what `Data::Value` encodes to).
pub(crate) fn encode_value(w: &mut Writer, v: &[u8]) {
    w.put(NFTA_DATA_VALUE, v);
}

pub(crate) fn encode_data(w: &mut Writer, d: &Data) {
    match d {
        Data::Value(v) => encode_value(w, v),
        Data::Verdict(v) => w.nest(NFTA_DATA_VERDICT, |w| {
            let (code, chain): (i32, Option<&str>) = match v {
                Verdict::Drop => (0, None),
                Verdict::Accept => (1, None),
                Verdict::Continue => (-1, None),
                Verdict::Jump(c) => (-3, Some(c)),
                Verdict::Goto(c) => (-4, Some(c)),
                Verdict::Return => (-5, None),
            };
            w.be32(1, code as u32);
            if let Some(c) = chain {
                w.str(2, c);
            }
        }),
    }
}

pub(crate) fn decode_data(data: &[u8]) -> Result<Data, Error> {
    for a in Attrs::new(data) {
        match a? {
            (NFTA_DATA_VALUE, v) => return Ok(Data::Value(v.into())),
            (NFTA_DATA_VERDICT, v) => {
                let mut code = None;
                let mut chain = None;
                for a in Attrs::new(v) {
                    match a? {
                        (1, v) => code = Some(attr::be32(v)? as i32),
                        (2, v) => chain = Some(attr::string(v)?),
                        _ => {}
                    }
                }
                let need_chain = || chain.clone().ok_or(Error::Malformed("jump without chain".into()));
                return Ok(Data::Verdict(match code {
                    Some(0) => Verdict::Drop,
                    Some(1) => Verdict::Accept,
                    Some(-1) => Verdict::Continue,
                    Some(-3) => Verdict::Jump(need_chain()?),
                    Some(-4) => Verdict::Goto(need_chain()?),
                    Some(-5) => Verdict::Return,
                    c => return Err(Error::Malformed(format!("unsupported verdict {c:?}"))),
                }));
            }
            _ => {}
        }
    }
    Err(Error::Malformed("empty data attribute".into()))
}

// Tables.

pub(crate) fn encode_table(w: &mut Writer, name: &str) {
    w.str(1, name);
}

pub(crate) fn decode_table_name(attrs: &[u8]) -> Result<String, Error> {
    for a in Attrs::new(attrs) {
        if let (1, v) = a? {
            return attr::string(v);
        }
    }
    Err(Error::Malformed("table without name".into()))
}

// Chains.

const HOOKS: [Hook; 5] = [Hook::Prerouting, Hook::Input, Hook::Forward, Hook::Output, Hook::Postrouting];

pub(crate) fn encode_chain(w: &mut Writer, table: &str, c: &Chain) {
    w.str(1, table);
    w.str(3, &c.name);
    if let Some(b) = &c.base {
        w.nest(4, |w| {
            w.be32(1, HOOKS.iter().position(|h| *h == b.hook).unwrap() as u32);
            w.be32(2, b.priority as u32);
        });
        w.be32(5, matches!(b.policy, Policy::Accept) as u32);
        w.str(
            7,
            match b.kind {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            },
        );
    }
}

/// Returns the chain's table and the chain.
pub(crate) fn decode_chain(attrs: &[u8]) -> Result<(String, Chain), Error> {
    let (mut table, mut name, mut hook, mut prio, mut policy, mut kind) =
        (String::new(), None, None, 0, Policy::Accept, ChainType::Filter);
    for a in Attrs::new(attrs) {
        match a? {
            (1, v) => table = attr::string(v)?,
            (3, v) => name = Some(attr::string(v)?),
            (4, v) => {
                for a in Attrs::new(v) {
                    match a? {
                        (1, v) => {
                            let n = attr::be32(v)? as usize;
                            hook = Some(*HOOKS.get(n).ok_or(Error::Malformed(format!("unsupported hook {n}")))?);
                        }
                        (2, v) => prio = attr::be32(v)? as i32,
                        _ => {}
                    }
                }
            }
            (5, v) => policy = if attr::be32(v)? == 1 { Policy::Accept } else { Policy::Drop },
            (7, v) => {
                kind = match attr::string(v)?.as_str() {
                    "nat" => ChainType::Nat,
                    "filter" => ChainType::Filter,
                    t => return Err(Error::Malformed(format!("unsupported chain type {t}"))),
                }
            }
            _ => {}
        }
    }
    let name = name.ok_or(Error::Malformed("chain without name".into()))?;
    let base = hook.map(|hook| BaseChain { kind, hook, priority: prio, policy });
    Ok((table, Chain { name, base }))
}

// Rules.

const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

pub(crate) fn encode_rule(w: &mut Writer, table: &str, r: &Rule) {
    w.str(1, table);
    w.str(2, &r.chain);
    if let Some(h) = r.handle {
        w.be64(3, h);
    }
    w.nest(4, |w| {
        for e in &r.exprs {
            w.nest(1, |w| e.encode(w));
        }
    });
    if let Some(c) = &r.comment {
        let mut ud = Vec::new();
        udata::put_comment(&mut ud, NFTNL_UDATA_RULE_COMMENT, c);
        w.put(7, &ud);
    }
}

pub(crate) fn decode_rule(attrs: &[u8]) -> Result<(&str, Rule), Error> {
    let mut table = "";
    let mut rule = Rule { chain: String::new(), handle: None, exprs: Vec::new(), comment: None };
    for a in Attrs::new(attrs) {
        match a? {
            (1, v) => table = attr::str(v)?,
            (2, v) => rule.chain = attr::string(v)?,
            (3, v) => rule.handle = Some(attr::be64(v)?),
            (4, v) => {
                for e in Attrs::new(v) {
                    rule.exprs.push(Expr::decode(e?.1)?);
                }
            }
            (7, v) => rule.comment = udata::get_comment(v, NFTNL_UDATA_RULE_COMMENT),
            _ => {}
        }
    }
    Ok((table, rule))
}

// Sets.

const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_TYPEOF: u8 = 4;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;

/// nft records one byte order per key; a concatenation has none (0), as
/// nft itself writes, and its components' types say how to print them.
fn byteorder(types: &[KeyType]) -> u32 {
    match types {
        [one] => one.byteorder(),
        _ => 0,
    }
}

pub(crate) fn encode_set(w: &mut Writer, table: &str, s: &Set, id: u32) {
    w.str(1, table);
    w.str(2, &s.name);
    let f = &s.flags;
    let mut flags = 0;
    for (on, bit) in [
        (f.constant, NFT_SET_CONSTANT),
        (f.interval, NFT_SET_INTERVAL),
        (f.timeout, NFT_SET_TIMEOUT),
        (f.dynamic, NFT_SET_EVAL),
        (s.data.is_some(), NFT_SET_MAP),
        (f.interval && s.key.len() > 1, NFT_SET_CONCAT),
    ] {
        if on {
            flags |= bit;
        }
    }
    w.be32(3, flags);
    let (kt, kl) = KeyType::encode_concat(&s.key);
    w.be32(4, kt);
    w.be32(5, kl);
    match &s.data {
        Some(SetData::Verdict) => w.be32(6, NFT_DATA_VERDICT),
        Some(SetData::Value(types)) => {
            let (dt, dl) = KeyType::encode_concat(types);
            w.be32(6, dt);
            w.be32(7, dl);
        }
        None => {}
    }
    // Field lengths go only with NFT_SET_CONCAT, which the kernel ties to
    // interval sets of concatenations.
    let concat_fields = f.interval && s.key.len() > 1;
    if concat_fields || s.size.is_some() {
        w.nest(9, |w| {
            if let Some(size) = s.size {
                w.be32(1, size);
            }
            if concat_fields {
                w.nest(2, |w| {
                    for t in &s.key {
                        w.nest(1, |w| w.be32(1, t.byte_len()));
                    }
                });
            }
        });
    }
    w.be32(10, id);
    if let Some(t) = s.timeout {
        w.be64(11, t.as_millis() as u64);
    }
    let mut ud = Vec::new();
    udata::put(&mut ud, UDATA_SET_KEYBYTEORDER, &byteorder(&s.key).to_ne_bytes());
    if let Some(SetData::Value(types)) = &s.data {
        udata::put(&mut ud, UDATA_SET_DATABYTEORDER, &byteorder(types).to_ne_bytes());
    }
    if let Some(description) = &s.typeof_description {
        ud.extend_from_slice(description);
    }
    if let Some(c) = &s.comment {
        udata::put_comment(&mut ud, UDATA_SET_COMMENT, c);
    }
    w.put(13, &ud);
}

pub(crate) fn decode_set(attrs: &[u8]) -> Result<(String, Set), Error> {
    let mut table = String::new();
    let (mut name, mut flags, mut key, mut data, mut size, mut timeout, mut comment, mut typeof_description) =
        (None, 0, None, None, None, None, None, None);
    for a in Attrs::new(attrs) {
        match a? {
            (1, v) => table = attr::string(v)?,
            (2, v) => name = Some(attr::string(v)?),
            (3, v) => flags = attr::be32(v)?,
            (4, v) => {
                let id = attr::be32(v)?;
                key =
                    Some(KeyType::decode_concat(id).ok_or(Error::Malformed(format!("unsupported key type {id:#x}")))?);
            }
            (6, v) => {
                let id = attr::be32(v)?;
                data = Some(if id == NFT_DATA_VERDICT {
                    SetData::Verdict
                } else {
                    SetData::Value(
                        KeyType::decode_concat(id).ok_or(Error::Malformed(format!("unsupported data type {id:#x}")))?,
                    )
                });
            }
            (9, v) => {
                for a in Attrs::new(v) {
                    if let (1, v) = a? {
                        size = Some(attr::be32(v)?);
                    }
                }
            }
            (11, v) => timeout = Some(Duration::from_millis(attr::be64(v)?)),
            (13, v) => {
                comment = udata::get_comment(v, UDATA_SET_COMMENT);
                let description =
                    udata::records(v, &[UDATA_SET_KEY_TYPEOF, UDATA_SET_DATA_TYPEOF, UDATA_SET_DATA_INTERVAL]);
                typeof_description = (!description.is_empty()).then_some(description);
            }
            _ => {}
        }
    }
    let set = Set {
        name: name.ok_or(Error::Malformed("set without name".into()))?,
        key: key.ok_or(Error::Malformed("set without key type".into()))?,
        data: data.filter(|_| flags & NFT_SET_MAP != 0),
        flags: SetFlags {
            constant: flags & NFT_SET_CONSTANT != 0,
            interval: flags & NFT_SET_INTERVAL != 0,
            timeout: flags & NFT_SET_TIMEOUT != 0,
            dynamic: flags & NFT_SET_EVAL != 0,
        },
        size,
        timeout: timeout.filter(|t| !t.is_zero()),
        typeof_description,
        comment,
    };
    Ok((table, set))
}

// Elements.

const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const UDATA_SET_ELEM_COMMENT: u8 = 0;

pub(crate) fn encode_elem_list(w: &mut Writer, table: &str, set: &str, elems: &[Element]) {
    w.str(1, table);
    w.str(2, set);
    w.nest(3, |w| {
        for e in elems {
            w.nest(1, |w| encode_elem(w, e));
        }
    });
}

fn encode_elem(w: &mut Writer, e: &Element) {
    w.nest(1, |w| encode_data(w, &Data::Value(e.key.clone())));
    if let Some(d) = &e.data {
        w.nest(2, |w| encode_data(w, d));
    }
    if e.interval_end {
        w.be32(3, NFT_SET_ELEM_INTERVAL_END);
    }
    if let Some(t) = e.timeout {
        w.be64(4, t.as_millis() as u64);
    }
    if let Some(c) = &e.comment {
        let mut ud = Vec::new();
        udata::put_comment(&mut ud, UDATA_SET_ELEM_COMMENT, c);
        w.put(6, &ud);
    }
}

/// Decodes one `NEWSETELEM` dump message into its elements.
pub(crate) fn decode_elem_list(attrs: &[u8], out: &mut Vec<Element>) -> Result<(), Error> {
    for a in Attrs::new(attrs) {
        if let (3, list) = a? {
            for e in Attrs::new(list) {
                out.push(decode_elem(e?.1)?);
            }
        }
    }
    Ok(())
}

fn decode_elem(attrs: &[u8]) -> Result<Element, Error> {
    let mut e = Element::default();
    for a in Attrs::new(attrs) {
        match a? {
            (1, v) => match decode_data(v)? {
                Data::Value(k) => e.key = k,
                Data::Verdict(_) => return Err(Error::Malformed("verdict as key".into())),
            },
            (2, v) => e.data = Some(decode_data(v)?),
            (3, v) => e.interval_end = attr::be32(v)? & NFT_SET_ELEM_INTERVAL_END != 0,
            (4, v) => e.timeout = Some(Duration::from_millis(attr::be64(v)?)),
            (6, v) => e.comment = udata::get_comment(v, UDATA_SET_ELEM_COMMENT),
            _ => {}
        }
    }
    Ok(e)
}
