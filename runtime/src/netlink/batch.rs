//! Transactions: operations encoded into one nf_tables batch.

use super::attr::Writer;
use super::codec::*;
use super::objects::{Chain, Element, Family, Rule, Set};

/// Elements per message: the element list is a nest with a u16 length, so a
/// large add must be split over several messages of the same batch.
const ELEMS_PER_MSG: usize = 512;
const NFNL_BATCH_GENID: u16 = 1;

/// An ordered list of operations on one table, committed atomically.
///
/// Each operation may span several messages; every message carries its own
/// sequence number so a kernel error maps back to the operation.
pub struct Batch {
    family: Family,
    table: String,
    body: Vec<u8>,
    ops: Vec<String>,
    /// Operation index of the message with sequence number `i + 1`.
    msg_op: Vec<usize>,
    next_set_id: u32,
}

impl Batch {
    pub fn new(family: Family, table: &str) -> Self {
        Batch { family, table: table.to_owned(), body: Vec::new(), ops: Vec::new(), msg_op: Vec::new(), next_set_id: 1 }
    }

    /// Addresses the operations that follow to another table, so that one batch
    /// (one atomic commit) can change the tables of both families.
    pub fn target(&mut self, family: Family, table: &str) -> &mut Self {
        self.family = family;
        table.clone_into(&mut self.table);
        self
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Netlink messages in the batch, without BEGIN and END.
    pub fn messages(&self) -> usize {
        self.msg_op.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Descriptions of the operations, in order.
    pub fn ops(&self) -> &[String] {
        &self.ops
    }

    fn op(&mut self, what: String) {
        self.ops.push(what);
    }

    fn msg(&mut self, m: Msg, flags: u16, attrs: impl FnOnce(&mut Writer, &str)) {
        self.msg_op.push(self.ops.len() - 1);
        let seq = self.msg_op.len() as u32;
        let start = begin_msg(&mut self.body, nft_type(m), flags, seq, self.family.code(), 0);
        attrs(&mut Writer { buf: &mut self.body }, &self.table);
        end_msg(&mut self.body, start);
    }

    pub fn add_table(&mut self) -> &mut Self {
        self.op(format!("add table {}", self.table));
        self.msg(Msg::NewTable, NLM_F_CREATE, encode_table);
        self
    }

    pub fn delete_table(&mut self) -> &mut Self {
        self.op(format!("delete table {}", self.table));
        self.msg(Msg::DelTable, 0, encode_table);
        self
    }

    pub fn add_chain(&mut self, chain: &Chain) -> &mut Self {
        self.op(format!("add chain {}", chain.name));
        self.msg(Msg::NewChain, NLM_F_CREATE, |w, t| encode_chain(w, t, chain));
        self
    }

    pub fn delete_chain(&mut self, name: &str) -> &mut Self {
        self.op(format!("delete chain {name}"));
        self.msg(Msg::DelChain, 0, |w, t| {
            w.str(1, t);
            w.str(3, name);
        });
        self
    }

    /// Deletes every rule of the chain.
    pub fn flush_chain(&mut self, name: &str) -> &mut Self {
        self.op(format!("flush chain {name}"));
        self.msg(Msg::DelRule, 0, |w, t| {
            w.str(1, t);
            w.str(2, name);
        });
        self
    }

    /// Appends the rule to its chain; its handle, if any, is ignored.
    pub fn add_rule(&mut self, rule: &Rule) -> &mut Self {
        self.op(format!("add rule to chain {}", rule.chain));
        let rule = Rule { handle: None, ..rule.clone() };
        self.msg(Msg::NewRule, NLM_F_CREATE | NLM_F_APPEND, |w, t| encode_rule(w, t, &rule));
        self
    }

    /// Replaces the rule with `handle` in place.
    pub fn replace_rule(&mut self, handle: u64, rule: &Rule) -> &mut Self {
        self.op(format!("replace rule {handle} in chain {}", rule.chain));
        let rule = Rule { handle: Some(handle), ..rule.clone() };
        self.msg(Msg::NewRule, NLM_F_REPLACE, |w, t| encode_rule(w, t, &rule));
        self
    }

    pub fn delete_rule(&mut self, chain: &str, handle: u64) -> &mut Self {
        self.op(format!("delete rule {handle} in chain {chain}"));
        self.msg(Msg::DelRule, 0, |w, t| {
            w.str(1, t);
            w.str(2, chain);
            w.be64(3, handle);
        });
        self
    }

    pub fn add_set(&mut self, set: &Set) -> &mut Self {
        self.op(format!("add set {}", set.name));
        let id = self.next_set_id;
        self.next_set_id += 1;
        self.msg(Msg::NewSet, NLM_F_CREATE, |w, t| encode_set(w, t, set, id));
        self
    }

    pub fn delete_set(&mut self, name: &str) -> &mut Self {
        self.op(format!("delete set {name}"));
        self.msg(Msg::DelSet, 0, |w, t| {
            w.str(1, t);
            w.str(2, name);
        });
        self
    }

    pub fn add_elements(&mut self, set: &str, elems: &[Element]) -> &mut Self {
        self.elements(Msg::NewSetElem, NLM_F_CREATE, "add", set, elems)
    }

    pub fn delete_elements(&mut self, set: &str, elems: &[Element]) -> &mut Self {
        self.elements(Msg::DelSetElem, 0, "delete", set, elems)
    }

    fn elements(&mut self, m: Msg, flags: u16, verb: &str, set: &str, elems: &[Element]) -> &mut Self {
        if elems.is_empty() {
            return self;
        }
        self.op(format!("{verb} {} elements of set {set}", elems.len()));
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            self.msg(m, flags, |w, t| encode_elem_list(w, t, set, chunk));
        }
        self
    }

    /// The operation that message `seq` belongs to.
    pub(crate) fn op_of_seq(&self, seq: u32) -> Option<usize> {
        seq.checked_sub(1).and_then(|i| self.msg_op.get(i as usize).copied())
    }

    /// The whole batch, framed by BEGIN/END; with `generation`, the kernel
    /// refuses it if the ruleset changed since that generation was read.
    pub(crate) fn encode(&self, generation: Option<u32>) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.body.len() + 64);
        let start = begin_msg(&mut buf, NFNL_MSG_BATCH_BEGIN, 0, 0, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES);
        if let Some(g) = generation {
            Writer { buf: &mut buf }.be32(NFNL_BATCH_GENID, g);
        }
        end_msg(&mut buf, start);
        buf.extend_from_slice(&self.body);
        let end_seq = self.msg_op.len() as u32 + 1;
        let start = begin_msg(&mut buf, NFNL_MSG_BATCH_END, 0, end_seq, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES);
        end_msg(&mut buf, start);
        buf
    }
}
