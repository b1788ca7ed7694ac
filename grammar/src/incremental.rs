//! Re-parsing a changed file item by item.
//!
//! pest reads about 18 MB/s, so parsing the 5 MB file of a 10k-service policy takes a
//! quarter of a second, while an edit usually touches one item. [`reparse`] keeps the
//! items before and after the bytes that changed, splits the text between into items
//! with a byte scan, takes every one whose text an old item had (moving it to where
//! it now is: one span, since the spans inside an item are relative to its start),
//! and runs pest on the rest.
//!
//! The split is exact for every text the grammar accepts, because no token can hold
//! `{`, `}`, `#`, `;` or a blank: a `#` always starts a comment that runs to the end of
//! the line, an item runs from its keyword to the first `}` after its `{`, and between
//! items there are only blanks, separators and comments. When the scan finds anything
//! else, or an item does not parse on its own, the whole file is parsed instead, so
//! a syntax error is always the one [`parse`] reports.

use std::collections::HashMap;

use crate::{parse, File, Item, Span, SyntaxError};

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
    // A first version has nothing to reuse: it is parsed whole, in parts on
    // every core, rather than item by item on one.
    let Some(plan) = (!parsed.text.is_empty()).then(|| plan(parsed, text)).flatten() else {
        parsed.file = parse(text)?;
        replace_text(&mut parsed.text, text);
        return Ok(parsed.file.items.len());
    };
    let fresh = plan.middle.iter().filter(|(source, _)| matches!(source, Source::Parsed(_))).count();
    let items = &mut parsed.file.items;
    let mut old: Vec<Option<Item>> = items.drain(plan.prefix..items.len() - plan.suffix).map(Some).collect();
    let middle: Vec<Item> = plan
        .middle
        .into_iter()
        .map(|(source, span)| match source {
            Source::Reused(index) => {
                let mut item = old[index - plan.prefix].take().expect("each old item is reused at most once");
                move_to(&mut item, span.start);
                item
            }
            Source::Parsed(item) => item,
        })
        .collect();
    let moved = plan.prefix + middle.len();
    items.splice(plan.prefix..plan.prefix, middle);
    for item in &mut items[moved..] {
        let to = item.span.start.checked_add_signed(plan.shift).expect("the suffix moves within the text");
        move_to(item, to);
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
/// last `suffix` are the old ones, the last moved by `shift` bytes, and those
/// between come from `middle`, each with its span in the new text.
struct Plan {
    prefix: usize,
    suffix: usize,
    shift: isize,
    middle: Vec<(Source, Span)>,
}

enum Source {
    /// The old item at this index.
    Reused(usize),
    Parsed(Item),
}

/// Finds what changed: the old items wholly inside the bytes both texts begin
/// with stay, and so do those wholly inside the bytes both end with, from the
/// first that the byte scan of the new text, resumed after the first ones,
/// lands on. Only the text between is split; its items are matched to the old
/// ones between by text (an item may have moved), and the rest parsed. `None`
/// when the scan finds no items there, or one of them does not parse alone.
fn plan(old: &Parsed, text: &str) -> Option<Plan> {
    let (before, after) = (old.text.as_bytes(), text.as_bytes());
    let head = common_prefix(before, after);
    let tail = common_suffix(&before[head..], &after[head..]);
    let shift = after.len() as isize - before.len() as isize;
    let olds = &old.file.items;
    let prefix = olds.partition_point(|item| item.span.end <= head);
    // An old item at or after this offset is followed by the same text in both.
    let same_after = before.len() - tail;
    let mut spans = Vec::new();
    let mut at = olds[..prefix].last().map_or(0, |item| item.span.end);
    let suffix_start = loop {
        at = skip_gap(after, at);
        let was = at as isize - shift;
        if was >= same_after as isize {
            if let Ok(index) = olds.binary_search_by_key(&(was as usize), |item| item.span.start) {
                break index;
            }
        }
        if at == after.len() {
            break olds.len();
        }
        let span = item_at(after, at)?;
        spans.push(span);
        at = span.end;
    };
    let old_text = |i: usize| &old.text[olds[i].span.start..olds[i].span.end];
    let mut moved: HashMap<&str, Vec<usize>> = HashMap::new();
    for i in (prefix..suffix_start).rev() {
        moved.entry(old_text(i)).or_default().push(i);
    }
    let middle = spans
        .into_iter()
        .map(|span| match moved.get_mut(&text[span.start..span.end]).and_then(Vec::pop) {
            Some(index) => Some((Source::Reused(index), span)),
            None => parse_item(text, span).map(|item| (Source::Parsed(item), span)),
        })
        .collect::<Option<_>>()?;
    Some(Plan { prefix, suffix: olds.len() - suffix_start, shift, middle })
}

/// How many bytes `a` and `b` begin with alike; compared a block at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let blocks = a.chunks(BLOCK).zip(b.chunks(BLOCK)).take_while(|(x, y)| x == y).count();
    let at = blocks * BLOCK;
    at + a[at.min(a.len())..].iter().zip(&b[at.min(b.len())..]).take_while(|(x, y)| x == y).count()
}

/// How many bytes `a` and `b` end with alike; compared a block at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let blocks = a.rchunks(BLOCK).zip(b.rchunks(BLOCK)).take_while(|(x, y)| x == y).count();
    let at = blocks * BLOCK;
    let (a, b) = (&a[..a.len().saturating_sub(at)], &b[..b.len().saturating_sub(at)]);
    at + a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
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

/// Moves `item` to start at byte `to`: only its own span, as every other span
/// in it is relative to that.
fn move_to(item: &mut Item, to: usize) {
    item.span = Span::new(to, to + item.span.end - item.span.start);
}

/// The spans of the items of `text`, by the byte scan alone; `None` when the
/// scan meets anything but items, blanks, separators and comments.
pub(crate) fn item_spans(text: &[u8]) -> Option<Vec<Span>> {
    let mut spans = Vec::new();
    let mut at = skip_gap(text, 0);
    while at < text.len() {
        let span = item_at(text, at)?;
        spans.push(span);
        at = skip_gap(text, span.end);
    }
    Some(spans)
}

/// The span of the item starting at `at`, from its keyword to its closing
/// brace; `None` when no brace-closed item starts there.
pub(crate) fn item_at(bytes: &[u8], at: usize) -> Option<Span> {
    let open = find_brace(bytes, at, b'{')?;
    let close = find_brace(bytes, open + 1, b'}')?;
    Some(Span::new(at, close + 1))
}

/// The first byte at or after `at` that is not a blank, a separator or in a comment.
pub(crate) fn skip_gap(bytes: &[u8], mut at: usize) -> usize {
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

#[cfg(test)]
mod tests;
