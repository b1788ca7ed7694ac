//! Re-parsing a changed file item by item.
//!
//! pest reads about 18 MB/s, so parsing the 5 MB file of a 10k-service policy takes a
//! quarter of a second, while an edit usually touches one item. [`reparse`] splits the
//! new text into items with a byte scan, takes every item whose text is unchanged from
//! the previous parse (moving its spans to where it now is), and runs pest on the rest.
//!
//! The split is exact for every text the grammar accepts, because no token can hold
//! `{`, `}`, `#`, `;` or a blank: a `#` always starts a comment that runs to the end of
//! the line, an item runs from its keyword to the first `}` after its `{`, and between
//! items there are only blanks, separators and comments. When the scan finds anything
//! else, or an item does not parse on its own, the whole file is parsed instead, so
//! a syntax error is always the one [`parse`] reports.

use std::collections::HashMap;

use crate::{
    parse, ClusterStmt, EndpointOption, EndpointsStmt, File, Item, ItemKind, NodeStmt, PortOption, ServiceStmt, Span,
    Stmt, SyntaxError, Word,
};

/// One file's text and its parse, kept to re-parse the file's next version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub text: String,
    pub file: File,
}

/// Parses `text` into `parsed`, the parse of an earlier version of the same file,
/// with the result of [`parse`], and returns how many items pest had to parse. On a
/// syntax error `parsed` is left as it was, so the version after a bad edit still
/// reuses the items of the last good one.
pub fn reparse(parsed: &mut Parsed, text: &str) -> Result<usize, SyntaxError> {
    if parsed.text == text {
        return Ok(0);
    }
    let planned = split(text).and_then(|spans| Some((plan(parsed, text, &spans)?, spans)));
    let Some((plan, spans)) = planned else {
        parsed.file = parse(text)?;
        replace_text(&mut parsed.text, text);
        return Ok(parsed.file.items.len());
    };
    let fresh = plan.middle.iter().filter(|source| matches!(source, Source::Parsed(_))).count();
    let items = &mut parsed.file.items;
    let mut old: Vec<Option<Item>> = items.drain(plan.prefix..items.len() - plan.suffix).map(Some).collect();
    let middle: Vec<Item> = plan
        .middle
        .into_iter()
        .map(|source| match source {
            Source::Reused(index) => old[index - plan.prefix].take().expect("each old item is reused at most once"),
            Source::Parsed(item) => item,
        })
        .collect();
    items.splice(plan.prefix..plan.prefix, middle);
    for (item, span) in items.iter_mut().zip(&spans) {
        move_to(item, span.start);
    }
    replace_text(&mut parsed.text, text);
    Ok(fresh)
}

/// Copies `text` into the buffer of the old text: a 5 MB allocation costs more in
/// page faults than the copy.
fn replace_text(old: &mut String, text: &str) {
    old.clear();
    old.push_str(text);
}

/// How the items of a new text come from the old ones: the first `prefix` and the
/// last `suffix` are the old ones at the same place from either end, those between
/// come from `middle`.
struct Plan {
    prefix: usize,
    suffix: usize,
    middle: Vec<Source>,
}

enum Source {
    /// The old item at this index.
    Reused(usize),
    Parsed(Item),
}

/// Matches the new items to the old by text, parsing those without a match; `None`
/// when one of them does not parse on its own.
fn plan(old: &Parsed, text: &str, spans: &[Span]) -> Option<Plan> {
    let old_text = |i: usize| &old.text[old.file.items[i].span.start..old.file.items[i].span.end];
    let new_text = |s: &Span| &text[s.start..s.end];
    let olds = old.file.items.len();
    // An edit usually leaves a long run of items unchanged before and after it.
    let prefix = spans.iter().zip(0..olds).take_while(|(s, i)| new_text(s) == old_text(*i)).count();
    let suffix =
        spans[prefix..].iter().rev().zip((prefix..olds).rev()).take_while(|(s, i)| new_text(s) == old_text(*i)).count();
    let mut moved: HashMap<&str, Vec<usize>> = HashMap::new();
    for i in (prefix..olds - suffix).rev() {
        moved.entry(old_text(i)).or_default().push(i);
    }
    let middle = spans[prefix..spans.len() - suffix]
        .iter()
        .map(|span| match moved.get_mut(new_text(span)).and_then(Vec::pop) {
            Some(index) => Some(Source::Reused(index)),
            None => parse_item(text, *span).map(Source::Parsed),
        })
        .collect::<Option<_>>()?;
    Some(Plan { prefix, suffix, middle })
}

/// Parses the item at `span` of `text` on its own, with spans into `text`.
fn parse_item(text: &str, span: Span) -> Option<Item> {
    let File { items } = parse(&text[span.start..span.end]).ok()?;
    let [mut item] = <[Item; 1]>::try_from(items).ok()?;
    if item.span != Span::new(0, span.end - span.start) {
        return None;
    }
    move_to(&mut item, span.start);
    Some(item)
}

/// Moves every span of `item` so that it starts at byte `to`.
fn move_to(item: &mut Item, to: usize) {
    let from = item.span.start;
    // Most items do not move: every one before an edit, and every one after an edit
    // that keeps the length.
    if from != to {
        for_each_span(item, &mut |s| *s = Span::new(s.start - from + to, s.end - from + to));
    }
}

/// The spans of the top-level items of `text`, each from its keyword to its closing
/// brace; `None` when the text is not a sequence of brace-closed items separated by
/// blanks, separators and comments.
pub fn split(text: &str) -> Option<Vec<Span>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    loop {
        at = skip_gap(bytes, at);
        if at == bytes.len() {
            return Some(spans);
        }
        let open = find_brace(bytes, at, b'{')?;
        let close = find_brace(bytes, open + 1, b'}')?;
        spans.push(Span::new(at, close + 1));
        at = close + 1;
    }
}

/// The first byte at or after `at` that is not a blank, a separator or in a comment.
fn skip_gap(bytes: &[u8], mut at: usize) -> usize {
    while let Some(&b) = bytes.get(at) {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b';' => at += 1,
            b'#' => at = line_end(bytes, at),
            _ => break,
        }
    }
    at
}

/// The position of the next `brace` outside comments, if no other brace comes first.
fn find_brace(bytes: &[u8], mut at: usize, brace: u8) -> Option<usize> {
    loop {
        at += memchr::memchr3(b'{', b'}', b'#', &bytes[at..])?;
        match bytes[at] {
            b'#' => at = line_end(bytes, at),
            b if b == brace => return Some(at),
            _ => return None,
        }
    }
}

/// Where the comment starting at `at` ends: at the next line break, as the grammar's
/// `NEWLINE` (`\n`, `\r\n` or `\r`) ends it.
fn line_end(bytes: &[u8], at: usize) -> usize {
    memchr::memchr2(b'\n', b'\r', &bytes[at..]).map_or(bytes.len(), |n| at + n)
}

/// Calls `f` on every span of `item`.
fn for_each_span<F: FnMut(&mut Span)>(item: &mut Item, f: &mut F) {
    f(&mut item.keyword);
    f(&mut item.span);
    match &mut item.kind {
        ItemKind::Cluster(body) => statements(body, f, |kind, f: &mut F| match kind {
            ClusterStmt::ClusterCidr(ws) | ClusterStmt::ServiceCidr(ws) | ClusterStmt::NodePortAddresses(ws) => {
                words(ws, f)
            }
            ClusterStmt::NodePortRange(w) | ClusterStmt::MasqueradeAll(w) => f(&mut w.span),
        }),
        ItemKind::Node { name, body } => {
            f(&mut name.span);
            statements(body, f, |kind, f: &mut F| match kind {
                NodeStmt::Address(ws) | NodeStmt::LocalAddress(ws) | NodeStmt::PodCidr(ws) => words(ws, f),
                NodeStmt::Zone(w) => f(&mut w.span),
            });
        }
        ItemKind::Service { name, body } => {
            f(&mut name.span);
            f(&mut name.namespace.span);
            f(&mut name.name.span);
            statements(body, f, service_spans);
        }
        ItemKind::Endpoints { name, body } => {
            f(&mut name.span);
            f(&mut name.namespace.span);
            f(&mut name.name.span);
            statements(body, f, endpoints_spans);
        }
    }
}

fn statements<T, F: FnMut(&mut Span)>(body: &mut [Stmt<T>], f: &mut F, kind: impl Fn(&mut T, &mut F)) {
    for stmt in body {
        f(&mut stmt.keyword);
        f(&mut stmt.span);
        kind(&mut stmt.kind, f);
    }
}

fn words<F: FnMut(&mut Span)>(ws: &mut [Word], f: &mut F) {
    ws.iter_mut().for_each(|w| f(&mut w.span));
}

fn service_spans<F: FnMut(&mut Span)>(kind: &mut ServiceStmt, f: &mut F) {
    match kind {
        ServiceStmt::ClusterIp(ws) | ServiceStmt::ExternalIp(ws) | ServiceStmt::SourceRanges(ws) => words(ws, f),
        ServiceStmt::Type(w)
        | ServiceStmt::ExternalTrafficPolicy(w)
        | ServiceStmt::InternalTrafficPolicy(w)
        | ServiceStmt::HealthCheckNodePort(w)
        | ServiceStmt::TrafficDistribution(w) => f(&mut w.span),
        ServiceStmt::LoadBalancerIp { address, mode } => {
            f(&mut address.span);
            mode.iter_mut().for_each(|w| f(&mut w.span));
        }
        ServiceStmt::SessionAffinity { mode, timeout } => {
            f(&mut mode.span);
            timeout.iter_mut().for_each(|w| f(&mut w.span));
        }
        ServiceStmt::Port(p) => {
            p.name.iter_mut().for_each(|w| f(&mut w.span));
            f(&mut p.port.span);
            f(&mut p.protocol.span);
            for option in &mut p.options {
                let (PortOption::Target(w) | PortOption::NodePort(w)) = option;
                f(&mut w.span);
            }
        }
    }
}

fn endpoints_spans<F: FnMut(&mut Span)>(kind: &mut EndpointsStmt, f: &mut F) {
    match kind {
        EndpointsStmt::Port { name, port } => {
            name.iter_mut().for_each(|w| f(&mut w.span));
            f(&mut port.span);
        }
        EndpointsStmt::Endpoint(e) => {
            f(&mut e.address.span);
            for option in &mut e.options {
                match option {
                    EndpointOption::Node(w) | EndpointOption::Zone(w) | EndpointOption::Condition(w) => f(&mut w.span),
                    EndpointOption::HintZones(ws) | EndpointOption::HintNodes(ws) => words(ws, f),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
