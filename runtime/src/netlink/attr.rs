//! Netlink attribute (TLV) encoding and decoding.
//!
//! nf_tables messages are flat TLV trees, so one small writer and one reader
//! serve every object and expression in both directions.

use super::Error;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_HDRLEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends attributes to a message buffer.
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn put(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub(crate) fn u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }

    pub(crate) fn be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    pub(crate) fn be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Strings go out NUL-terminated, as the kernel's NLA_STRING policy expects.
    pub(crate) fn str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    pub(crate) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
        f(&mut Writer { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
}

/// Iterates the attributes of one level, yielding `(type, payload)`.
pub(crate) struct Attrs<'a> {
    data: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Attrs { data }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([self.data[0], self.data[1]]) as usize;
        let ty = u16::from_ne_bytes([self.data[2], self.data[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.data.len() {
            self.data = &[];
            return Some(Err(Error::Malformed(format!("attribute {ty} length {len}"))));
        }
        let payload = &self.data[NLA_HDRLEN..len];
        self.data = &self.data[align4(len).min(self.data.len())..];
        Some(Ok((ty, payload)))
    }
}

pub(crate) fn be32(v: &[u8]) -> Result<u32, Error> {
    v.try_into().map(u32::from_be_bytes).map_err(|_| Error::Malformed(format!("expected 4 bytes, got {}", v.len())))
}

pub(crate) fn be64(v: &[u8]) -> Result<u64, Error> {
    v.try_into().map(u64::from_be_bytes).map_err(|_| Error::Malformed(format!("expected 8 bytes, got {}", v.len())))
}

pub(crate) fn u8(v: &[u8]) -> Result<u8, Error> {
    v.first().copied().ok_or_else(|| Error::Malformed("empty u8 attribute".into()))
}

pub(crate) fn string(v: &[u8]) -> Result<String, Error> {
    str(v).map(str::to_owned)
}

/// A NUL-terminated string attribute, borrowed: read-back compares and
/// matches most names without keeping them.
pub(crate) fn str(v: &[u8]) -> Result<&str, Error> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    std::str::from_utf8(&v[..end]).map_err(|_| Error::Malformed("non-UTF-8 name".into()))
}

/// libnftnl's userdata TLVs (u8 type, u8 length, value): where `nft` keeps
/// comments and key byte-order hints the kernel stores opaquely.
pub(crate) mod udata {
    pub(crate) fn put(buf: &mut Vec<u8>, ty: u8, value: &[u8]) {
        buf.push(ty);
        buf.push(value.len() as u8);
        buf.extend_from_slice(value);
    }

    /// Comments are NUL-terminated and at most 255 bytes including the NUL.
    pub(crate) fn put_comment(buf: &mut Vec<u8>, ty: u8, comment: &str) {
        let mut v: Vec<u8> = comment.as_bytes().iter().copied().take(254).collect();
        v.push(0);
        put(buf, ty, &v);
    }

    pub(crate) fn get(data: &[u8], want: u8) -> Option<&[u8]> {
        let mut rest = data;
        while rest.len() >= 2 {
            let (ty, len) = (rest[0], rest[1] as usize);
            let value = rest.get(2..2 + len)?;
            if ty == want {
                return Some(value);
            }
            rest = &rest[2 + len..];
        }
        None
    }

    /// The records of the given types, as they are (type, length, value).
    pub(crate) fn records(data: &[u8], types: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        while let [ty, len, ..] = *rest {
            let Some(record) = rest.get(..2 + usize::from(len)) else { break };
            if types.contains(&ty) {
                out.extend_from_slice(record);
            }
            rest = &rest[record.len()..];
        }
        out
    }

    pub(crate) fn get_comment(data: &[u8], want: u8) -> Option<String> {
        let v = get(data, want)?;
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        Some(String::from_utf8_lossy(&v[..end]).into_owned())
    }
}
