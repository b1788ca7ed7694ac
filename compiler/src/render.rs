//! Rendering a ruleset as `nft -f` input: deterministic (same ruleset, same bytes)
//! and explicit (`meta l4proto tcp th dport 80` rather than `tcp dport 80`), so the
//! kernel objects `nft` builds from it are exactly the ones the runtime sends.

use std::fmt::{self, Write};
use std::net::IpAddr;

use crate::policy::Family;
use crate::ruleset::{
    AddrField, BaseHook, Chain, ChainKind, Element, ElementData, Field, Hook, KeyType, MapData, Match, Rule, Ruleset,
    Set, Statement, Table, Value, Verdict,
};

/// The whole ruleset as `nft -f` input.
pub fn render(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for (i, table) in ruleset.tables.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_table(&mut out, table).expect("writing to a String cannot fail");
    }
    out
}

pub fn family_keyword(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

fn render_table(out: &mut String, table: &Table) -> fmt::Result {
    writeln!(out, "table {} {} {{", family_keyword(table.family), table.name)?;
    let mut first = true;
    for set in &table.sets {
        if !first {
            out.push('\n');
        }
        first = false;
        render_set(out, table.family, set)?;
    }
    for chain in &table.chains {
        if !first {
            out.push('\n');
        }
        first = false;
        render_chain(out, table.family, chain)?;
    }
    writeln!(out, "}}")
}

fn render_set(out: &mut String, family: Family, set: &Set) -> fmt::Result {
    let kind = if set.data.is_some() { "map" } else { "set" };
    writeln!(out, "\t{kind} {} {{", set.name)?;
    let key: Vec<&str> = set.key.iter().map(|k| key_type(*k)).collect();
    match set.data {
        None => writeln!(out, "\t\ttype {}", key.join(" . "))?,
        Some(MapData::Verdict) => writeln!(out, "\t\ttype {} : verdict", key.join(" . "))?,
        // Declared by example, as nft has no type name for numgen's numbers;
        // `th dport` is the port of any transport protocol.
        Some(MapData::Endpoint) => {
            writeln!(out, "\t\ttypeof numgen random mod 2 : {} daddr . th dport", family_keyword(family))?
        }
    }
    if let Some(timeout) = set.dynamic_timeout {
        writeln!(out, "\t\tflags dynamic,timeout")?;
        writeln!(out, "\t\ttimeout {}s", timeout.as_secs())?;
    }
    if let Some(comment) = &set.comment {
        writeln!(out, "\t\tcomment \"{comment}\"")?;
    }
    if !set.elements.is_empty() {
        writeln!(out, "\t\telements = {{")?;
        for element in &set.elements {
            writeln!(out, "\t\t\t{},", ElementText(element))?;
        }
        writeln!(out, "\t\t}}")?;
    }
    writeln!(out, "\t}}")
}

fn key_type(key: KeyType) -> &'static str {
    match key {
        KeyType::Ipv4Addr => "ipv4_addr",
        KeyType::Ipv6Addr => "ipv6_addr",
        KeyType::InetProto => "inet_proto",
        KeyType::InetService => "inet_service",
        KeyType::Numgen => "integer",
    }
}

fn render_chain(out: &mut String, family: Family, chain: &Chain) -> fmt::Result {
    writeln!(out, "\tchain {} {{", chain.name)?;
    if let Some(hook) = chain.hook {
        writeln!(out, "\t\t{}", BaseHookText(hook))?;
    }
    for rule in &chain.rules {
        writeln!(out, "\t\t{}", RuleText(family, rule))?;
    }
    writeln!(out, "\t}}")
}

struct BaseHookText(BaseHook);

impl fmt::Display for BaseHookText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0.kind {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        };
        let hook = match self.0.hook {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        };
        write!(f, "type {kind} hook {hook} priority {}; policy accept;", self.0.priority)
    }
}

/// One rule in nft syntax, without indentation. Also used by the tracer's output.
pub struct RuleText<'a>(pub Family, pub &'a Rule);

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RuleText(family, rule) = *self;
        let mut sep = "";
        for m in &rule.matches {
            write!(f, "{sep}{}", MatchText(family, m))?;
            sep = " ";
        }
        for s in &rule.statements {
            write!(f, "{sep}{}", StatementText(family, s))?;
            sep = " ";
        }
        if let Some(comment) = &rule.comment {
            write!(f, "{sep}comment \"{comment}\"")?;
        }
        Ok(())
    }
}

/// A set element: `KEY`, `KEY : VERDICT` or `KEY : ADDRESS . PORT`.
pub struct ElementText<'a>(pub &'a Element);

impl fmt::Display for ElementText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for value in &self.0.key {
            write!(f, "{sep}{}", ValueText(value))?;
            sep = " . ";
        }
        match &self.0.data {
            None => {}
            Some(ElementData::Verdict(verdict)) => write!(f, " : {}", VerdictText(verdict))?,
            Some(ElementData::Endpoint { address, port }) => write!(f, " : {address} . {port}")?,
        }
        Ok(())
    }
}

struct FieldText(Family, Field);

impl fmt::Display for FieldText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = family_keyword(self.0);
        match self.1 {
            Field::Saddr => write!(f, "{ip} saddr"),
            Field::Daddr => write!(f, "{ip} daddr"),
            Field::L4Proto => f.write_str("meta l4proto"),
            Field::Dport => f.write_str("th dport"),
        }
    }
}

struct KeyText<'a>(Family, &'a [Field]);

impl fmt::Display for KeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for field in self.1 {
            write!(f, "{sep}{}", FieldText(self.0, *field))?;
            sep = " . ";
        }
        Ok(())
    }
}

struct ValueText<'a>(&'a Value);

impl fmt::Display for ValueText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Value::Addr(a) => a.fmt(f),
            Value::Net(n) => n.fmt(f),
            Value::Proto(p) => p.fmt(f),
            Value::Port(p) => p.fmt(f),
            Value::Index(i) => i.fmt(f),
        }
    }
}

struct MatchText<'a>(Family, &'a Match);

impl fmt::Display for MatchText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = self.0;
        let op = |negate: bool| if negate { "!= " } else { "" };
        match self.1 {
            Match::Cmp { field, negate, value } => {
                write!(f, "{} {}{}", FieldText(family, *field), op(*negate), ValueText(value))
            }
            Match::InSet { key, set, negate } => write!(f, "{} {}@{set}", KeyText(family, key), op(*negate)),
            Match::CtStateNew => f.write_str("ct state new"),
            Match::CtStatusDnat => f.write_str("ct status dnat"),
            Match::FibLocal(AddrField::Saddr) => f.write_str("fib saddr type local"),
            Match::FibLocal(AddrField::Daddr) => f.write_str("fib daddr type local"),
            Match::Numgen { modulus, value } => write!(f, "numgen random mod {modulus} == {value}"),
            Match::MarkClear(mask) => write!(f, "meta mark & {mask:#010x} == 0"),
        }
    }
}

struct StatementText<'a>(Family, &'a Statement);

impl fmt::Display for StatementText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = self.0;
        match self.1 {
            Statement::MarkOr(bits) => write!(f, "meta mark set meta mark | {bits:#010x}"),
            Statement::MarkXor(bits) => write!(f, "meta mark set meta mark ^ {bits:#010x}"),
            Statement::Update { set, key } => write!(f, "update @{set} {{ {} }}", KeyText(family, key)),
            Statement::Vmap { key, map } => write!(f, "{} vmap @{map}", KeyText(family, key)),
            Statement::Dnat { address: IpAddr::V4(a), port } => write!(f, "dnat to {a}:{port}"),
            Statement::Dnat { address: IpAddr::V6(a), port } => write!(f, "dnat to [{a}]:{port}"),
            Statement::DnatMap { modulus, offset, map } => {
                write!(f, "dnat {} to numgen random mod {modulus} offset {offset} map @{map}", family_keyword(family))
            }
            Statement::Masquerade => f.write_str("masquerade fully-random"),
            Statement::Reject => f.write_str("reject"),
            Statement::Verdict(v) => VerdictText(v).fmt(f),
        }
    }
}

/// A verdict in nft syntax: `drop`, `goto CHAIN`, ...
pub struct VerdictText<'a>(pub &'a Verdict);

impl fmt::Display for VerdictText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}
