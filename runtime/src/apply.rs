//! Applying rulesets: diff against the committed state, one batch, one atomic
//! commit checked against the generation the diff was computed from.
//!
//! The [`Applier`] keeps the committed state (our tables and their rule handles)
//! in memory, so a sync reads nothing back from the kernel; the handles of rules
//! it added are learned, one chain at a time, when a later change needs them.
//! It touches only the tables named `svcnft`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use svcnft_compiler::diff::{diff, Op, Transaction};
use svcnft_compiler::policy::Family;
use svcnft_compiler::ruleset::{Ruleset, TABLE_NAME};

use crate::kernel::{self, nl_family};
use crate::netlink::{self as nl, Batch, Conn};

/// Attempts at a commit when others change the ruleset between our read and send.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("svcnft needs CAP_NET_ADMIN to change nftables (run as root)")]
    PermissionDenied,
    #[error("the ruleset kept changing under us; gave up after {ATTEMPTS} attempts")]
    Contended,
    #[error("the kernel refused the change at operation {index} ({op}): {reason}")]
    Rejected { index: usize, op: String, reason: std::io::Error },
    #[error(transparent)]
    Netlink(nl::Error),
    #[error("rule {position} of chain {chain} has no handle in the committed state")]
    UnknownRule { chain: String, position: usize },
}

impl From<nl::Error> for ApplyError {
    fn from(e: nl::Error) -> Self {
        match e {
            nl::Error::PermissionDenied => ApplyError::PermissionDenied,
            nl::Error::GenerationChanged => ApplyError::Contended,
            nl::Error::Rejected { index, op, source } => ApplyError::Rejected { index, op, reason: source },
            e => ApplyError::Netlink(e),
        }
    }
}

/// What one `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Operations of the transaction (0: nothing was sent).
    pub operations: usize,
    /// Netlink messages in the batch, BEGIN and END included (0 when nothing was sent).
    pub messages: usize,
    /// Commits refused because another writer changed the ruleset first.
    pub retries: usize,
    /// Diff, encoding (with any rule handles it had to learn) and commit.
    pub elapsed: Duration,
}

/// Our tables as committed: the model and the kernel handles of the rules of
/// every chain not changed since they were read.
#[derive(Debug, Clone, Default)]
struct Committed {
    ruleset: Arc<Ruleset>,
    handles: FxHashMap<(Family, String), Vec<u64>>,
    generation: u32,
    /// False while a read-back that replaces the state has not succeeded.
    known: bool,
}

/// Applies rulesets to the network namespace of the thread that opened it.
pub struct Applier {
    conn: Conn,
    committed: Committed,
}

impl Applier {
    /// Opens nf_tables and adopts the svcnft tables already there (never flushing
    /// them: traffic keeps flowing across a restart).
    pub fn open() -> Result<Applier, ApplyError> {
        let conn = Conn::open()?;
        let mut applier = Applier { conn, committed: Committed::default() };
        applier.reread()?;
        Ok(applier)
    }

    /// The ruleset the kernel holds, as far as this applier knows.
    pub fn committed(&self) -> &Ruleset {
        &self.committed.ruleset
    }

    /// Reads our tables back from the kernel, replacing what we believed.
    pub fn reread(&mut self) -> Result<(), ApplyError> {
        // What we believed goes first: the read then reuses its memory, and at
        // 10k services freeing it after the read cost as much as a tenth of it.
        self.committed = Committed::default();
        let mut committed = Committed { known: true, ..Committed::default() };
        let mut ruleset = Ruleset::default();
        for family in Family::ALL {
            // Each set's elements are decoded by the thread that read them.
            let decode = |set: &nl::Set, elements| kernel::decode_set_elements(family, set, elements);
            if let Some(state) = self.conn.read_table_config_with(nl_family(family), TABLE_NAME, &decode)? {
                committed.generation = committed.generation.max(state.generation);
                let decoded = kernel::decode_table(family, state);
                committed.handles.extend(decoded.handles.into_iter().map(|(chain, h)| ((family, chain), h)));
                ruleset.tables.push(decoded.table);
            }
        }
        if ruleset.tables.is_empty() {
            committed.generation = self.conn.generation()?;
        }
        committed.ruleset = Arc::new(ruleset);
        self.committed = committed;
        Ok(())
    }

    /// Whether someone else changed the ruleset since our last read or commit.
    pub fn generation_moved(&mut self) -> Result<bool, ApplyError> {
        Ok(self.conn.generation()? != self.committed.generation)
    }

    /// The transaction `apply` would send now.
    pub fn plan(&self, desired: &Ruleset) -> Transaction {
        diff(&self.committed.ruleset, desired)
    }

    /// Makes the kernel hold `desired`: the difference, in one atomic batch. When
    /// another writer got in between, reads the tables again and recomputes.
    /// The applier keeps `desired` as the committed state (shared, not copied).
    pub fn apply(&mut self, desired: impl Into<Arc<Ruleset>>) -> Result<ApplyReport, ApplyError> {
        let desired = desired.into();
        let started = Instant::now();
        if !self.committed.known {
            self.reread()?;
        }
        let mut retries = 0;
        loop {
            let transaction = self.plan(&desired);
            if transaction.is_empty() {
                return Ok(ApplyReport { operations: 0, messages: 0, retries, elapsed: started.elapsed() });
            }
            let batch = self.encode(&transaction, &desired)?;
            match self.conn.commit(&batch, Some(self.committed.generation)) {
                Ok(()) => {
                    let previous = self.after_commit(&transaction, desired)?;
                    let elapsed = started.elapsed();
                    drop(previous);
                    return Ok(ApplyReport {
                        operations: transaction.len(),
                        messages: batch.messages() + 2,
                        retries,
                        elapsed,
                    });
                }
                Err(nl::Error::GenerationChanged) if retries + 1 < ATTEMPTS => {
                    retries += 1;
                    self.reread()?;
                }
                Err(nl::Error::Rejected { index, op, source }) => {
                    // Batch operations are the transaction's, one for one: name it in nft syntax.
                    let op = transaction.ops.get(index).map_or(op, |o| o.to_string());
                    return Err(ApplyError::Rejected { index, op, reason: source });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes svcnft's tables (only those).
    pub fn cleanup(&mut self) -> Result<ApplyReport, ApplyError> {
        self.apply(Ruleset::default())
    }

    /// The kernel handle of a committed rule; a chain changed since its handles
    /// were read is read now (it holds what we committed, or the generation
    /// check refuses the batch this handle goes into).
    fn handle(&mut self, family: Family, chain: &str, position: usize) -> Result<u64, ApplyError> {
        let key = (family, chain.to_string());
        if !self.committed.handles.contains_key(&key) {
            let rules = self.conn.read_rules(nl_family(family), TABLE_NAME, chain)?;
            let handles = rules.iter().map(|r| r.handle.unwrap_or_default()).collect();
            self.committed.handles.insert(key.clone(), handles);
        }
        self.committed.handles[&key]
            .get(position)
            .copied()
            .ok_or_else(|| ApplyError::UnknownRule { chain: chain.to_string(), position })
    }

    fn encode(&mut self, transaction: &Transaction, desired: &Ruleset) -> Result<Batch, ApplyError> {
        let mut batch = Batch::new(nl::Family::Ip, TABLE_NAME);
        for op in &transaction.ops {
            let family = op.family();
            batch.target(nl_family(family), TABLE_NAME);
            match op {
                Op::AddTable { .. } => {
                    batch.add_table();
                }
                Op::DeleteTable { .. } => {
                    batch.delete_table();
                }
                Op::AddSet { set, .. } => {
                    batch.add_set(&kernel::encode_set(family, set));
                }
                Op::DeleteSet { set, .. } => {
                    batch.delete_set(set);
                }
                Op::AddElements { set, elements, .. } | Op::DeleteElements { set, elements, .. } => {
                    let declared = desired
                        .table(family)
                        .and_then(|t| t.set(set))
                        .or_else(|| self.committed.ruleset.table(family).and_then(|t| t.set(set)))
                        .expect("a diff only touches elements of declared sets");
                    let encoded: Vec<nl::Element> =
                        elements.iter().map(|e| kernel::encode_element(declared, e)).collect();
                    if matches!(op, Op::AddElements { .. }) {
                        batch.add_elements(set, &encoded);
                    } else {
                        batch.delete_elements(set, &encoded);
                    }
                }
                Op::AddChain { chain, hook, .. } => {
                    batch.add_chain(&kernel::encode_chain(chain, *hook));
                }
                Op::DeleteChain { chain, .. } => {
                    batch.delete_chain(chain);
                }
                Op::FlushChain { chain, .. } => {
                    batch.flush_chain(chain);
                }
                Op::AppendRule { chain, rule, .. } => {
                    batch.add_rule(&kernel::encode_rule(family, chain, rule));
                }
                Op::ReplaceRule { chain, position, rule, .. } => {
                    let handle = self.handle(family, chain, *position)?;
                    batch.replace_rule(handle, &kernel::encode_rule(family, chain, rule));
                }
                Op::DeleteRule { chain, position, .. } => {
                    batch.delete_rule(chain, self.handle(family, chain, *position)?);
                }
            }
        }
        Ok(batch)
    }

    /// Records the new state: `desired`, without the handles of the chains this
    /// transaction added rules to or removed rules from (learned when needed, see
    /// [`Applier::handle`]); a replaced rule keeps its handle.
    /// Returns the state it replaces, which can take a while to free.
    fn after_commit(&mut self, transaction: &Transaction, desired: Arc<Ruleset>) -> Result<Arc<Ruleset>, ApplyError> {
        for op in &transaction.ops {
            match op {
                Op::AppendRule { family, chain, .. }
                | Op::DeleteRule { family, chain, .. }
                | Op::FlushChain { family, chain }
                | Op::AddChain { family, chain, .. }
                | Op::DeleteChain { family, chain } => {
                    self.committed.handles.remove(&(*family, chain.clone()));
                }
                Op::DeleteTable { family } => self.committed.handles.retain(|(f, _), _| f != family),
                _ => {}
            }
        }
        let previous = std::mem::replace(&mut self.committed.ruleset, desired);
        self.committed.generation = self.conn.generation()?;
        Ok(previous)
    }
}
