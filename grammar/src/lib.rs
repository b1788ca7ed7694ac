//! The svcnft policy language: a pest grammar and a parser into an AST whose every
//! node carries its source span.
//!
//! The grammar fixes the shape of items and statements but lexes leaf values
//! loosely ([`Word`]); the checker validates them, so a bad port or address gets a
//! precise message rather than a generic "expected ..." error.

// pest is used without its `std` feature, which would probe the native stack on
// every rule call (a third of the parse time of a large policy); its derived
// parser then names `alloc`. Recursion is bounded by the grammar, which nests
// blocks one level deep.
extern crate alloc;

use pest::iterators::Pair;
use pest::Parser as _;
use pest_derive::Parser;

pub mod incremental;
mod spans;

#[derive(Parser)]
#[grammar = "services.pest"]
struct Grammar;

/// A byte range into one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    fn of(pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        Span::new(s.start(), s.end())
    }
}

/// A leaf token as written: a name, address, CIDR, number, duration or keyword value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub span: Span,
}

impl Word {
    fn of(pair: &Pair<'_, Rule>) -> Word {
        Word { text: pair.as_str().to_owned(), span: Span::of(pair) }
    }
}

/// `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub namespace: Word,
    pub name: Word,
    pub span: Span,
}

/// One parsed file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct File {
    pub items: Vec<Item>,
}

/// A top-level item. Its `span` is where it is in its file; every other span
/// in it, `keyword` included, counts from the item's start, so that an item
/// moved by an edit elsewhere in the file moves by one span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The item's keyword (`cluster`, `node`, ...).
    pub keyword: Span,
    /// The whole item, keyword to closing brace.
    pub span: Span,
    pub kind: ItemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    Cluster(Vec<Stmt<ClusterStmt>>),
    Node { name: Word, body: Vec<Stmt<NodeStmt>> },
    Service { name: QualifiedName, body: Vec<Stmt<ServiceStmt>> },
    Endpoints { name: QualifiedName, body: Vec<Stmt<EndpointsStmt>> },
}

/// A statement inside a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt<T> {
    /// The statement's keyword.
    pub keyword: Span,
    /// The whole statement, keyword to last value.
    pub span: Span,
    pub kind: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterStmt {
    ClusterCidr(Vec<Word>),
    ServiceCidr(Vec<Word>),
    NodePortAddresses(Vec<Word>),
    NodePortRange(Word),
    MasqueradeAll(Word),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStmt {
    Address(Vec<Word>),
    LocalAddress(Vec<Word>),
    PodCidr(Vec<Word>),
    Zone(Word),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceStmt {
    Type(Word),
    ClusterIp(Vec<Word>),
    Port(PortStmt),
    ExternalIp(Vec<Word>),
    LoadBalancerIp { address: Word, mode: Option<Word> },
    SourceRanges(Vec<Word>),
    ExternalTrafficPolicy(Word),
    InternalTrafficPolicy(Word),
    HealthCheckNodePort(Word),
    SessionAffinity { mode: Word, timeout: Option<Word> },
    TrafficDistribution(Word),
}

/// `port [NAME] PORT/PROTO [target PORT|NAME] [node-port PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortStmt {
    pub name: Option<Word>,
    pub port: Word,
    pub protocol: Word,
    /// In source order; repeats are kept so the checker can reject them.
    pub options: Vec<PortOption>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOption {
    Target(Word),
    NodePort(Word),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointsStmt {
    /// `port [NAME] PORT`.
    Port {
        name: Option<Word>,
        port: Word,
    },
    Endpoint(EndpointStmt),
}

/// `endpoint ADDRESS [node NAME] [zone NAME] [CONDITIONS] [hint-zones ...] [hint-nodes ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStmt {
    pub address: Word,
    /// In source order; repeats are kept so the checker can reject them.
    pub options: Vec<EndpointOption>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointOption {
    Node(Word),
    Zone(Word),
    Condition(Word),
    HintZones(Vec<Word>),
    HintNodes(Vec<Word>),
}

/// A syntax error: where parsing stopped and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Parses one file. Never panics; the only error is the first syntax error.
///
/// pest reads about 18 MB/s, so a large file is cut into parts at item
/// boundaries by the byte scan of [`incremental`] and the parts parsed on every
/// core. When the scan or a part fails, the whole file goes through pest on one
/// thread, which reports the same first error as always.
pub fn parse(text: &str) -> Result<File, SyntaxError> {
    match in_parts(text) {
        Some(file) => Ok(file),
        None => parse_whole(text),
    }
}

/// A file with syntax errors, read as far as it goes: the items that parse, the
/// first error of every item that does not, and what those items declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub file: File,
    /// In file order; the first is the one [`parse`] reports.
    pub errors: Vec<SyntaxError>,
    /// The items that did not parse, as far as their first words tell.
    pub broken: Vec<BrokenItem>,
}

/// What an item that does not parse declared, read from its first two words
/// (the language's keyword and name), so that a checker can tell a name that is
/// missing from one whose declaration is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenItem {
    pub keyword: String,
    /// The word after the keyword, if any (a node or `namespace/name`).
    pub name: Option<String>,
}

/// Parses one file, and when it has syntax errors, reads it on with [`recover`].
pub fn parse_recovering(text: &str) -> Result<File, Recovered> {
    parse(text).map_err(|first| recover(text, first))
}

/// The items of `text`, which does not parse (`first` is what [`parse`]
/// reported), as far as they go: every item the byte scan of [`incremental`]
/// finds is parsed alone, so that each broken one reports its own error and
/// the others can still be checked. Where the scan finds no item (a missing or
/// stray brace), pest's error reading on from there is reported, and the text
/// up to the next line that starts with an item's keyword is spoiled.
pub fn recover(text: &str, first: SyntaxError) -> Recovered {
    let bytes = text.as_bytes();
    let mut out = Recovered::default();
    let mut at = incremental::skip_gap(bytes, 0);
    while at < bytes.len() {
        let (end, parsed) = match incremental::item_at(bytes, at) {
            Some(item) => (item.end, parse_whole(&text[at..item.end])),
            // (Should the rest parse after all, it is all taken.)
            None => match parse_whole(&text[at..]) {
                Ok(rest) => (bytes.len(), Ok(rest)),
                Err(e) => (next_item_line(text, at), Err(e)),
            },
        };
        match parsed {
            Ok(File { items }) => out.file.items.extend(items.into_iter().map(|mut item| {
                item.span = Span::new(item.span.start + at, item.span.end + at);
                item
            })),
            Err(e) => {
                out.errors.push(SyntaxError { span: Span::new(e.span.start + at, e.span.end + at), ..e });
                out.broken.push(BrokenItem::of(&text[at..end]));
            }
        }
        at = incremental::skip_gap(bytes, end);
    }
    // The whole parse's error reads as it always has.
    match out.errors.first_mut() {
        Some(e) if e.span.start == first.span.start => *e = first,
        _ => out.errors.insert(0, first),
    }
    out
}

const ITEM_KEYWORDS: [&str; 4] = ["cluster", "node", "service", "endpoints"];

/// Where the keyword is on the first line after the one holding `at` that
/// starts with an item's keyword, or the end of `text`.
fn next_item_line(text: &str, at: usize) -> usize {
    let mut start = at;
    while let Some(line_break) = text[start..].find(['\n', '\r']) {
        start += line_break + 1;
        let indent = text[start..].len() - text[start..].trim_start_matches([' ', '\t']).len();
        let word = text[start + indent..].split([' ', '\t', '{', '\r', '\n']).next().unwrap_or_default();
        if ITEM_KEYWORDS.contains(&word) {
            return start + indent;
        }
    }
    text.len()
}

impl BrokenItem {
    /// From an item's text: its first two words, or, when something else comes
    /// before the keyword, those of the line of its `{`.
    fn of(text: &str) -> BrokenItem {
        let head = |line: &str| {
            let mut words = line.split(|c: char| c.is_whitespace() || c == '{').filter(|w| !w.is_empty());
            let keyword = words.next().unwrap_or_default().to_owned();
            BrokenItem { name: words.next().map(str::to_owned), keyword }
        };
        let first = head(text);
        if ITEM_KEYWORDS.contains(&first.keyword.as_str()) {
            return first;
        }
        let brace = text.find('{').unwrap_or(text.len());
        head(&text[text[..brace].rfind(['\n', '\r']).map_or(0, |n| n + 1)..brace])
    }
}

/// Below this size a file is parsed whole: a part is then worth less than the
/// thread that would parse it.
const PARSE_IN_PARTS_ABOVE: usize = 256 * 1024;

/// The items of `text`, parsed in parts of at least [`PARSE_IN_PARTS_ABOVE`]
/// bytes, one per core, or `None` when `text` is small, does not split into
/// items, or a part does not parse.
fn in_parts(text: &str) -> Option<File> {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if text.len() <= PARSE_IN_PARTS_ABOVE {
        return None;
    }
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cores.min(text.len() / PARSE_IN_PARTS_ABOVE);
    if threads < 2 {
        return None;
    }
    let spans = incremental::item_spans(text.as_bytes())?;
    let per_part = spans.len().div_ceil(threads).max(1);
    let parts: Vec<Option<Vec<Item>>> = std::thread::scope(|s| {
        // The calling thread takes the last part: one thread fewer to start,
        // and one allocator arena fewer left holding what pest freed. A part
        // whose thread cannot start is parsed here too.
        let mut chunks: Vec<&[Span]> = spans.chunks(per_part).collect();
        let last = chunks.pop()?;
        let started: Vec<_> = chunks
            .into_iter()
            .map(|part| std::thread::Builder::new().spawn_scoped(s, move || parse_part(text, part)).map_err(|_| part))
            .collect();
        let last = parse_part(text, last);
        let joined = started.into_iter().map(|part| match part {
            Ok(handle) => handle.join().ok().flatten(),
            Err(part) => parse_part(text, part),
        });
        Some(joined.chain([last]).collect())
    })?;
    let mut items = Vec::with_capacity(spans.len());
    for part in parts {
        items.extend(part?);
    }
    Some(File { items })
}

/// The items at `spans` (consecutive, as the scan found them), parsed as one
/// text and moved to their places in `text`; `None` unless they parse to
/// exactly those items.
fn parse_part(text: &str, spans: &[Span]) -> Option<Vec<Item>> {
    let (start, end) = (spans.first()?.start, spans.last()?.end);
    let File { mut items } = parse_whole(&text[start..end]).ok()?;
    let moved = items.len() == spans.len()
        && items.iter_mut().zip(spans).all(|(item, span)| {
            item.span = Span::new(item.span.start + start, item.span.end + start);
            item.span == *span
        });
    moved.then_some(items)
}

fn parse_whole(text: &str) -> Result<File, SyntaxError> {
    let mut pairs = Grammar::parse(Rule::file, text).map_err(|e| syntax_error(text, e))?;
    let items = pairs
        .next()
        .map(|file| file.into_inner().filter(|p| !punctuation(p) && p.as_rule() != Rule::EOI).map(item).collect())
        .unwrap_or_default();
    Ok(File { items })
}

/// The grammar guarantees the shape of every pair; these are its invariants.
const SHAPE: &str = "the grammar guarantees this child";

fn item(pair: Pair<'_, Rule>) -> Item {
    let span = Span::of(&pair);
    let rule = pair.as_rule();
    let mut inner = pair.into_inner().filter(|p| !punctuation(p));
    let keyword = Span::of(&inner.next().expect(SHAPE));
    let kind = match rule {
        Rule::cluster => ItemKind::Cluster(inner.map(|p| stmt(p, cluster_stmt)).collect()),
        Rule::node => {
            let name = Word::of(&inner.next().expect(SHAPE));
            ItemKind::Node { name, body: inner.map(|p| stmt(p, node_stmt)).collect() }
        }
        Rule::service => {
            let name = qname(inner.next().expect(SHAPE));
            ItemKind::Service { name, body: inner.map(|p| stmt(p, service_stmt)).collect() }
        }
        _ => {
            let name = qname(inner.next().expect(SHAPE));
            ItemKind::Endpoints { name, body: inner.map(|p| stmt(p, endpoints_stmt)).collect() }
        }
    };
    let mut item = Item { keyword, span, kind };
    spans::for_each_inner_span(&mut item, &mut |s| *s = Span::new(s.start - span.start, s.end - span.start));
    item
}

fn qname(pair: Pair<'_, Rule>) -> QualifiedName {
    let span = Span::of(&pair);
    let mut parts = pair.into_inner().map(|p| Word::of(&p));
    let namespace = parts.next().expect(SHAPE);
    let name = parts.next().expect(SHAPE);
    QualifiedName { namespace, name, span }
}

/// Separators and braces: structure the grammar needs but the AST does not keep.
fn punctuation(pair: &Pair<'_, Rule>) -> bool {
    matches!(pair.as_rule(), Rule::sep | Rule::open | Rule::close)
}

/// Builds a statement: its first child is the keyword, `build` reads the rest.
/// The span ends at the last child, not at the whitespace the grammar skipped.
fn stmt<T>(pair: Pair<'_, Rule>, build: fn(Rule, Vec<Pair<'_, Rule>>) -> T) -> Stmt<T> {
    let rule = pair.as_rule();
    let mut inner = pair.into_inner();
    let keyword = Span::of(&inner.next().expect(SHAPE));
    let args: Vec<_> = inner.collect();
    let end = args.last().map_or(keyword.end, |p| p.as_span().end());
    Stmt { keyword, span: Span::new(keyword.start, end), kind: build(rule, args) }
}

fn words(args: &[Pair<'_, Rule>]) -> Vec<Word> {
    args.iter().map(Word::of).collect()
}

fn first(args: &[Pair<'_, Rule>]) -> Word {
    Word::of(args.first().expect(SHAPE))
}

fn cluster_stmt(rule: Rule, args: Vec<Pair<'_, Rule>>) -> ClusterStmt {
    match rule {
        Rule::cluster_cidr => ClusterStmt::ClusterCidr(words(&args)),
        Rule::service_cidr => ClusterStmt::ServiceCidr(words(&args)),
        Rule::node_port_addresses => ClusterStmt::NodePortAddresses(words(&args)),
        Rule::node_port_range => ClusterStmt::NodePortRange(first(&args)),
        _ => ClusterStmt::MasqueradeAll(first(&args)),
    }
}

fn node_stmt(rule: Rule, args: Vec<Pair<'_, Rule>>) -> NodeStmt {
    match rule {
        Rule::address => NodeStmt::Address(words(&args)),
        Rule::local_address => NodeStmt::LocalAddress(words(&args)),
        Rule::pod_cidr => NodeStmt::PodCidr(words(&args)),
        _ => NodeStmt::Zone(first(&args)),
    }
}

fn service_stmt(rule: Rule, args: Vec<Pair<'_, Rule>>) -> ServiceStmt {
    match rule {
        Rule::service_type => ServiceStmt::Type(first(&args)),
        Rule::cluster_ip => ServiceStmt::ClusterIp(words(&args)),
        Rule::port => ServiceStmt::Port(port_stmt(args)),
        Rule::external_ip => ServiceStmt::ExternalIp(words(&args)),
        Rule::load_balancer_ip => {
            ServiceStmt::LoadBalancerIp { address: first(&args), mode: args.get(1).map(Word::of) }
        }
        Rule::source_ranges => ServiceStmt::SourceRanges(words(&args)),
        Rule::external_traffic_policy => ServiceStmt::ExternalTrafficPolicy(first(&args)),
        Rule::internal_traffic_policy => ServiceStmt::InternalTrafficPolicy(first(&args)),
        Rule::health_check_node_port => ServiceStmt::HealthCheckNodePort(first(&args)),
        Rule::session_affinity => ServiceStmt::SessionAffinity {
            mode: first(&args),
            timeout: args.iter().find(|p| p.as_rule() == Rule::timeout).map(Word::of),
        },
        _ => ServiceStmt::TrafficDistribution(first(&args)),
    }
}

fn port_stmt(args: Vec<Pair<'_, Rule>>) -> PortStmt {
    let mut name = None;
    let mut number = None;
    let mut options = Vec::new();
    for arg in args {
        match arg.as_rule() {
            Rule::port_name => name = Some(Word::of(&arg)),
            Rule::port_proto => {
                let mut parts = arg.into_inner().map(|p| Word::of(&p));
                number = Some((parts.next().expect(SHAPE), parts.next().expect(SHAPE)));
            }
            Rule::target => options.push(PortOption::Target(option_value(arg))),
            _ => options.push(PortOption::NodePort(option_value(arg))),
        }
    }
    let (port, protocol) = number.expect(SHAPE);
    PortStmt { name, port, protocol, options }
}

/// The value of a `keyword value` option.
fn option_value(pair: Pair<'_, Rule>) -> Word {
    Word::of(&pair.into_inner().nth(1).expect(SHAPE))
}

fn endpoints_stmt(rule: Rule, args: Vec<Pair<'_, Rule>>) -> EndpointsStmt {
    if rule == Rule::endpoint_port {
        let mut values = words(&args);
        let port = values.pop().expect(SHAPE);
        return EndpointsStmt::Port { name: values.pop(), port };
    }
    let mut args = args.into_iter();
    let address = Word::of(&args.next().expect(SHAPE));
    let options = args
        .map(|opt| match opt.as_rule() {
            Rule::endpoint_node => EndpointOption::Node(option_value(opt)),
            Rule::endpoint_zone => EndpointOption::Zone(option_value(opt)),
            Rule::hint_zones => EndpointOption::HintZones(list_values(opt)),
            Rule::hint_nodes => EndpointOption::HintNodes(list_values(opt)),
            _ => EndpointOption::Condition(Word::of(&opt)),
        })
        .collect();
    EndpointsStmt::Endpoint(EndpointStmt { address, options })
}

/// The values of a `keyword value...` option.
fn list_values(pair: Pair<'_, Rule>) -> Vec<Word> {
    pair.into_inner().skip(1).map(|p| Word::of(&p)).collect()
}

/// Turns pest's error into one message in the language's own terms, with a span
/// covering the offending word (at least one character, so a caret can point at it).
fn syntax_error(text: &str, err: pest::error::Error<Rule>) -> SyntaxError {
    let start = match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let rest = text.get(start..).unwrap_or("");
    let len =
        rest.char_indices().find(|&(_, c)| c.is_whitespace() || ";{}#".contains(c)).map_or(rest.len(), |(i, _)| i);
    let len = if len == 0 { rest.chars().next().map_or(0, char::len_utf8) } else { len };
    let found = match &rest[..len] {
        "" => "end of file".to_owned(),
        "\n" | "\r" => "end of line".to_owned(),
        w => format!("`{w}`"),
    };
    let expected = match &err.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<String> = Vec::new();
            for name in positives.iter().map(|r| describe(*r)) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let message = match expected.as_slice() {
        [] => format!("unexpected {found}"),
        [one] => format!("expected {one}, found {found}"),
        [init @ .., last] => format!("expected {} or {last}, found {found}", init.join(", ")),
    };
    SyntaxError { span: Span::new(start, start + len), message }
}

/// How a grammar rule is named in a syntax error. Keywords are named as written,
/// so an unknown statement's error lists exactly the statements allowed there.
fn describe(rule: Rule) -> String {
    let fixed = match rule {
        Rule::EOI => "end of file",
        Rule::file => "`cluster`, `node`, `service` or `endpoints`",
        Rule::open => "`{` on the line of its keyword",
        Rule::close => "`}`",
        Rule::sep => "end of statement",
        Rule::value | Rule::name_part => "a value",
        Rule::qname => "a service name NAMESPACE/NAME",
        Rule::port_proto | Rule::port_number | Rule::port_name => "PORT/PROTO",
        Rule::protocol => "a protocol",
        Rule::timeout => "a duration",
        _ => {
            let name = format!("{rule:?}");
            return match name.strip_prefix("kw_") {
                Some(keyword) => format!("`{}`", keyword.replace('_', "-")),
                None => "end of statement".to_owned(),
            };
        }
    };
    fixed.to_owned()
}

#[cfg(test)]
mod tests;
