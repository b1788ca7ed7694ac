//! Rendering a ruleset as `nft -f` input: deterministic (same ruleset, same bytes)
//! and explicit (`meta l4proto tcp th dport 80` rather than `tcp dport 80`), so the
//! kernel objects `nft` builds from it are exactly the ones the runtime sends.

use std::fmt::{self, Write};
use std::net::IpAddr;

use crate::policy::Family;
use crate::ruleset::{
    AddrField, BaseHook, Chain, ChainKind, Element, Field, Hook, KeyType, Match, Rule, Ruleset, Set, Statement, Table,
    Value, Verdict,
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
        render_set(out, set)?;
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

fn render_set(out: &mut String, set: &Set) -> fmt::Result {
    let kind = if set.verdict_map { "map" } else { "set" };
    writeln!(out, "\t{kind} {} {{", set.name)?;
    let key: Vec<&str> = set.key.iter().map(|k| key_type(*k)).collect();
    let value = if set.verdict_map { " : verdict" } else { "" };
    writeln!(out, "\t\ttype {}{value}", key.join(" . "))?;
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
        let mut words: Vec<String> = rule.matches.iter().map(|m| match_text(family, m)).collect();
        words.extend(rule.statements.iter().map(|s| statement_text(family, s)));
        if let Some(comment) = &rule.comment {
            words.push(format!("comment \"{comment}\""));
        }
        f.write_str(&words.join(" "))
    }
}

struct ElementText<'a>(&'a Element);

impl fmt::Display for ElementText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key: Vec<String> = self.0.key.iter().map(value_text).collect();
        f.write_str(&key.join(" . "))?;
        if let Some(verdict) = &self.0.verdict {
            write!(f, " : {}", verdict_text(verdict))?;
        }
        Ok(())
    }
}

pub fn field_text(family: Family, field: Field) -> String {
    let ip = family_keyword(family);
    match field {
        Field::Saddr => format!("{ip} saddr"),
        Field::Daddr => format!("{ip} daddr"),
        Field::L4Proto => "meta l4proto".into(),
        Field::Dport => "th dport".into(),
    }
}

fn key_text(family: Family, key: &[Field]) -> String {
    key.iter().map(|f| field_text(family, *f)).collect::<Vec<_>>().join(" . ")
}

pub fn value_text(value: &Value) -> String {
    match value {
        Value::Addr(a) => a.to_string(),
        Value::Net(n) => n.to_string(),
        Value::Proto(p) => p.to_string(),
        Value::Port(p) => p.to_string(),
    }
}

fn match_text(family: Family, m: &Match) -> String {
    let op = |negate: bool| if negate { "!= " } else { "" };
    match m {
        Match::Cmp { field, negate, value } => {
            format!("{} {}{}", field_text(family, *field), op(*negate), value_text(value))
        }
        Match::InSet { key, set, negate } => format!("{} {}@{set}", key_text(family, key), op(*negate)),
        Match::CtStateNew => "ct state new".into(),
        Match::CtStatusDnat => "ct status dnat".into(),
        Match::FibLocal(AddrField::Saddr) => "fib saddr type local".into(),
        Match::FibLocal(AddrField::Daddr) => "fib daddr type local".into(),
        Match::Numgen { modulus, value } => format!("numgen random mod {modulus} == {value}"),
        Match::MarkClear(mask) => format!("meta mark & {mask:#010x} == 0"),
    }
}

fn statement_text(family: Family, s: &Statement) -> String {
    match s {
        Statement::MarkOr(bits) => format!("meta mark set meta mark | {bits:#010x}"),
        Statement::MarkXor(bits) => format!("meta mark set meta mark ^ {bits:#010x}"),
        Statement::Update { set, key } => format!("update @{set} {{ {} }}", key_text(family, key)),
        Statement::Vmap { key, map } => format!("{} vmap @{map}", key_text(family, key)),
        Statement::Dnat { address: IpAddr::V4(a), port } => format!("dnat to {a}:{port}"),
        Statement::Dnat { address: IpAddr::V6(a), port } => format!("dnat to [{a}]:{port}"),
        Statement::Masquerade => "masquerade fully-random".into(),
        Statement::Reject => "reject".into(),
        Statement::Verdict(v) => verdict_text(v),
    }
}

pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}
