//! The difference between the committed and the desired ruleset, as the ordered
//! operations of one nf_tables transaction, at the finest grain the kernel offers:
//! set elements, single rules (replaced in place by position), single chains.
//!
//! The order makes every reference resolve inside the batch:
//! 1. add new tables;
//! 2. flush chains that go, and chains with rules that refer to a set or chain
//!    about to be recreated under the same name;
//! 3. delete stale elements (they may point at chains about to go);
//! 4. delete chains, then sets, that must be recreated;
//! 5. add sets and chains that are new or recreated;
//! 6. add elements (they may point at the new chains);
//! 7. replace, delete and append rules of the chains that stay;
//! 8. delete sets, then chains, that are gone for good: only now is nothing left
//!    that refers to them, so a rule that named one is replaced in place rather
//!    than its whole chain rebuilt (moving one endpoint renames its affinity set);
//! 9. delete tables of families that are gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::policy::Family;
use crate::render::{family_keyword, ElementText, RuleText};
use crate::ruleset::{BaseHook, Chain, Element, Match, Rule, Ruleset, Set, Statement, Table, Verdict};

/// One operation of a transaction. Rule positions are indexes into the committed
/// chain (the runtime maps them to kernel rule handles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    AddTable {
        family: Family,
    },
    DeleteTable {
        family: Family,
    },
    /// Adds a set without its elements (they follow as `AddElements`).
    AddSet {
        family: Family,
        set: Set,
    },
    DeleteSet {
        family: Family,
        set: String,
    },
    AddElements {
        family: Family,
        set: String,
        elements: Vec<Element>,
    },
    DeleteElements {
        family: Family,
        set: String,
        elements: Vec<Element>,
    },
    /// Adds an empty chain (its rules follow as `AppendRule`).
    AddChain {
        family: Family,
        chain: String,
        hook: Option<BaseHook>,
    },
    DeleteChain {
        family: Family,
        chain: String,
    },
    /// Removes every rule of a chain.
    FlushChain {
        family: Family,
        chain: String,
    },
    AppendRule {
        family: Family,
        chain: String,
        rule: Rule,
    },
    ReplaceRule {
        family: Family,
        chain: String,
        position: usize,
        rule: Rule,
    },
    DeleteRule {
        family: Family,
        chain: String,
        position: usize,
    },
}

/// The operations that turn one ruleset into another, in commit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// The phases of `diff`, in commit order (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    AddTables,
    RemoveRules,
    DeleteElements,
    DeleteChains,
    DeleteSets,
    AddSetsAndChains,
    AddElements,
    ChangeRules,
    DeleteRemoved,
    DeleteTables,
}

/// Operations tagged with their phase; sorted stably by phase at the end, so
/// operations of one phase keep the order they were found in.
#[derive(Default)]
struct Phases(Vec<(Phase, Op)>);

impl Phases {
    fn push(&mut self, phase: Phase, op: Op) {
        self.0.push((phase, op));
    }
}

/// Computes the transaction that turns `committed` into `desired`. Elements of
/// dynamic sets belong to the data path and are never compared.
pub fn diff(committed: &Ruleset, desired: &Ruleset) -> Transaction {
    let mut phases = Phases::default();
    for family in Family::ALL {
        match (committed.table(family), desired.table(family)) {
            (None, None) => {}
            (Some(_), None) => phases.push(Phase::DeleteTables, Op::DeleteTable { family }),
            (None, Some(new)) => {
                phases.push(Phase::AddTables, Op::AddTable { family });
                diff_table(&empty_table(new), new, &mut phases);
            }
            (Some(old), Some(new)) => diff_table(old, new, &mut phases),
        }
    }
    phases.0.sort_by_key(|(phase, _)| *phase);
    let ops = phases.0.into_iter().map(|(_, op)| op).collect();
    Transaction { ops }
}

fn empty_table(like: &Table) -> Table {
    Table { family: like.family, name: like.name.clone(), sets: Vec::new(), chains: Vec::new() }
}

/// A set's declaration: everything but its elements.
fn declaration(set: &Set) -> Set {
    Set { elements: Vec::new(), ..set.clone() }
}

/// Whether two sets are declared alike (without copying their elements).
fn same_declaration(a: &Set, b: &Set) -> bool {
    let Set { name, key, data, dynamic_timeout, comment, elements: _ } = a;
    (name, key, data, dynamic_timeout, comment) == (&b.name, &b.key, &b.data, &b.dynamic_timeout, &b.comment)
}

/// Pairs each object of `new` with the object of `old` of the same name, and
/// lists the objects of `old` that `new` lacks. The compiler emits objects in a
/// stable order, so between two compilations nearly every object is found where
/// the last match suggests (same place, shifted by what came or went), without
/// hashing a name (or, for an object both share, reading it); only the rest is
/// looked up in an index built on first need.
#[allow(clippy::type_complexity)]
fn pair<'a, T>(
    old: &'a [Arc<T>],
    new: &'a [Arc<T>],
    name: impl Fn(&T) -> &str,
) -> (Vec<Option<&'a Arc<T>>>, Vec<&'a Arc<T>>) {
    let mut index: Option<HashMap<&str, usize>> = None;
    let mut matched = vec![false; old.len()];
    let mut shift: isize = 0;
    let pairs = new
        .iter()
        .enumerate()
        .map(|(position, item)| {
            let guess = position
                .checked_add_signed(shift)
                .filter(|&g| old.get(g).is_some_and(|o| Arc::ptr_eq(o, item) || name(o) == name(item)));
            let found = guess.or_else(|| {
                let index = index.get_or_insert_with(|| old.iter().enumerate().map(|(i, o)| (name(o), i)).collect());
                index.get(name(item)).copied()
            });
            found.map(|at| {
                shift = at as isize - position as isize;
                matched[at] = true;
                &old[at]
            })
        })
        .collect();
    let gone = old.iter().zip(matched).filter(|(_, m)| !m).map(|(o, _)| o).collect();
    (pairs, gone)
}

fn diff_table(old: &Table, new: &Table, phases: &mut Phases) {
    let family = new.family;
    let (old_sets, removed_sets) = pair(&old.sets, &new.sets, |s| &s.name);
    let (old_chains, removed_chains) = pair(&old.chains, &new.chains, |c| &c.name);

    // Objects recreated under the same name because their declaration changed:
    // the old one must be gone, and every rule naming it, before the new one comes.
    let gone_sets: BTreeSet<&str> = old_sets
        .iter()
        .zip(&new.sets)
        .filter(|(was, is)| was.is_some_and(|was| !Arc::ptr_eq(was, is) && !same_declaration(was, is)))
        .map(|(_, is)| is.name.as_str())
        .collect();
    let recreated_chains = old_chains
        .iter()
        .zip(&new.chains)
        .filter_map(|(was, is)| was.filter(|w| !Arc::ptr_eq(w, is) && w.hook != is.hook));
    let gone_chains: BTreeSet<&str> = recreated_chains.clone().map(|c| c.name.as_str()).collect();
    let removed_sets: BTreeSet<&str> = removed_sets.iter().map(|s| s.name.as_str()).collect();
    let refers_to_gone = |rule: &Rule| {
        rule_sets(rule).any(|s| gone_sets.contains(s)) || rule_chains(rule).any(|c| gone_chains.contains(c))
    };

    let leaving: BTreeMap<&str, &Chain> =
        recreated_chains.chain(removed_chains.iter().copied()).map(|c| (c.name.as_str(), &**c)).collect();
    for (name, chain) in &leaving {
        if !chain.rules.is_empty() {
            phases.push(Phase::RemoveRules, Op::FlushChain { family, chain: name.to_string() });
        }
        if gone_chains.contains(name) {
            phases.push(Phase::DeleteChains, Op::DeleteChain { family, chain: name.to_string() });
        }
    }
    for name in &gone_sets {
        phases.push(Phase::DeleteSets, Op::DeleteSet { family, set: name.to_string() });
    }
    for name in &removed_sets {
        phases.push(Phase::DeleteRemoved, Op::DeleteSet { family, set: name.to_string() });
    }
    for name in leaving.keys().filter(|name| !gone_chains.contains(*name)) {
        phases.push(Phase::DeleteRemoved, Op::DeleteChain { family, chain: name.to_string() });
    }

    for (set, old) in new.sets.iter().zip(old_sets) {
        let old = old.filter(|_| gone_sets.is_empty() || !gone_sets.contains(set.name.as_str()));
        if old.is_none() {
            phases.push(Phase::AddSetsAndChains, Op::AddSet { family, set: declaration(set) });
        }
        // Dynamic sets' elements are the data path's; the same allocation is a
        // set a lowering kept (unless its elements may point at a recreated chain).
        if (gone_chains.is_empty() && old.is_some_and(|old| Arc::ptr_eq(old, set))) || set.dynamic_timeout.is_some() {
            continue;
        }
        let old_elements: &[Element] = old.map_or(&[], |old| &old.elements);
        // An element pointing at a recreated chain must be re-added to point at it.
        let dangling = |e: &Element| matches!(e.verdict_data(), Some(Verdict::Jump(c) | Verdict::Goto(c)) if gone_chains.contains(c.as_str()));
        let (was, is) = if gone_chains.is_empty() {
            differing(old_elements, &set.elements)
        } else {
            (old_elements, &set.elements[..])
        };
        let before: BTreeSet<&Element> = was.iter().collect();
        let after: BTreeSet<&Element> = is.iter().collect();
        let stale: Vec<Element> =
            before.iter().filter(|e| !after.contains(*e) || dangling(e)).map(|e| (*e).clone()).collect();
        let fresh: Vec<Element> =
            after.iter().filter(|e| !before.contains(*e) || dangling(e)).map(|e| (*e).clone()).collect();
        if !stale.is_empty() {
            phases.push(Phase::DeleteElements, Op::DeleteElements { family, set: set.name.clone(), elements: stale });
        }
        if !fresh.is_empty() {
            phases.push(Phase::AddElements, Op::AddElements { family, set: set.name.clone(), elements: fresh });
        }
    }

    for (chain, old) in new.chains.iter().zip(old_chains) {
        let old = old.filter(|_| gone_chains.is_empty() || !gone_chains.contains(chain.name.as_str()));
        let Some(old) = old else {
            phases.push(Phase::AddSetsAndChains, Op::AddChain { family, chain: chain.name.clone(), hook: chain.hook });
            append_all(family, chain, phases);
            continue;
        };
        // Rules naming a set or chain about to be recreated go first, even when
        // they stay the same (a changed affinity timeout recreates only the set).
        let refers = (!gone_sets.is_empty() || !gone_chains.is_empty()) && old.rules.iter().any(refers_to_gone);
        // The same allocation: a lowering that kept the port's chains.
        if !refers && (Arc::ptr_eq(old, chain) || old.rules == chain.rules) {
            continue;
        }
        if refers {
            phases.push(Phase::RemoveRules, Op::FlushChain { family, chain: chain.name.clone() });
            append_all(family, chain, phases);
            continue;
        }
        for (position, (was, is)) in old.rules.iter().zip(&chain.rules).enumerate() {
            if was != is {
                let rule = is.clone();
                phases.push(Phase::ChangeRules, Op::ReplaceRule { family, chain: chain.name.clone(), position, rule });
            }
        }
        for position in chain.rules.len()..old.rules.len() {
            phases.push(Phase::ChangeRules, Op::DeleteRule { family, chain: chain.name.clone(), position });
        }
        for rule in chain.rules.iter().skip(old.rules.len()) {
            phases.push(Phase::ChangeRules, Op::AppendRule { family, chain: chain.name.clone(), rule: rule.clone() });
        }
    }
}

/// The parts of two element lists between their common head and tail: only there
/// can they differ, since an element is in a set once. A set may hold every
/// endpoint of the cluster; moving one leaves a middle of one element each.
fn differing<'a>(old: &'a [Element], new: &'a [Element]) -> (&'a [Element], &'a [Element]) {
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let (old, new) = (&old[head..], &new[head..]);
    let tail = old.iter().rev().zip(new.iter().rev()).take_while(|(a, b)| a == b).count();
    (&old[..old.len() - tail], &new[..new.len() - tail])
}

fn append_all(family: Family, chain: &Chain, phases: &mut Phases) {
    for rule in &chain.rules {
        phases.push(Phase::ChangeRules, Op::AppendRule { family, chain: chain.name.clone(), rule: rule.clone() });
    }
}

/// The sets a rule refers to.
fn rule_sets(rule: &Rule) -> impl Iterator<Item = &str> {
    let from_matches = rule.matches.iter().filter_map(|m| match m {
        Match::InSet { set, .. } => Some(set.as_str()),
        _ => None,
    });
    let from_statements = rule.statements.iter().filter_map(|s| match s {
        Statement::Update { set, .. } => Some(set.as_str()),
        Statement::Vmap { map, .. } | Statement::DnatMap { map, .. } => Some(map.as_str()),
        _ => None,
    });
    from_matches.chain(from_statements)
}

/// The chains a rule jumps or goes to.
fn rule_chains(rule: &Rule) -> impl Iterator<Item = &str> {
    rule.statements.iter().filter_map(|s| match s {
        Statement::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => Some(c.as_str()),
        _ => None,
    })
}

impl Op {
    /// The family (table) the operation changes.
    pub fn family(&self) -> Family {
        match self {
            Op::AddTable { family }
            | Op::DeleteTable { family }
            | Op::AddSet { family, .. }
            | Op::DeleteSet { family, .. }
            | Op::AddElements { family, .. }
            | Op::DeleteElements { family, .. }
            | Op::AddChain { family, .. }
            | Op::DeleteChain { family, .. }
            | Op::FlushChain { family, .. }
            | Op::AppendRule { family, .. }
            | Op::ReplaceRule { family, .. }
            | Op::DeleteRule { family, .. } => *family,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |family: &Family| format!("{} svcnft", family_keyword(*family));
        let elements = |elements: &[Element]| -> String {
            elements.iter().map(|e| ElementText(e).to_string()).collect::<Vec<_>>().join(", ")
        };
        match self {
            Op::AddTable { family } => write!(f, "add table {}", t(family)),
            Op::DeleteTable { family } => write!(f, "delete table {}", t(family)),
            Op::AddSet { family, set } => write!(f, "add set {} {}", t(family), set.name),
            Op::DeleteSet { family, set } => write!(f, "delete set {} {set}", t(family)),
            Op::AddElements { family, set, elements: e } => {
                write!(f, "add element {} {set} {{ {} }}", t(family), elements(e))
            }
            Op::DeleteElements { family, set, elements: e } => {
                write!(f, "delete element {} {set} {{ {} }}", t(family), elements(e))
            }
            Op::AddChain { family, chain, .. } => write!(f, "add chain {} {chain}", t(family)),
            Op::DeleteChain { family, chain } => write!(f, "delete chain {} {chain}", t(family)),
            Op::FlushChain { family, chain } => write!(f, "flush chain {} {chain}", t(family)),
            Op::AppendRule { family, chain, rule } => {
                write!(f, "add rule {} {chain} {}", t(family), RuleText(*family, rule))
            }
            Op::ReplaceRule { family, chain, position, rule } => {
                write!(f, "replace rule {} {chain} position {position} {}", t(family), RuleText(*family, rule))
            }
            Op::DeleteRule { family, chain, position } => {
                write!(f, "delete rule {} {chain} position {position}", t(family))
            }
        }
    }
}
