use super::*;

const EXAMPLES: [&str; 9] = [
    include_str!("../../../examples/dual-stack.svc"),
    include_str!("../../../examples/masquerade-all.svc"),
    include_str!("../../../examples/node-port-addresses.svc"),
    include_str!("../../../examples/session-affinity.svc"),
    include_str!("../../../examples/source-ip-lab.svc"),
    include_str!("../../../examples/source-ranges.svc"),
    include_str!("../../../examples/terminating.svc"),
    include_str!("../../../examples/topology.svc"),
    include_str!("../../../examples/traffic-policies.svc"),
];

/// The spans of the top-level items of `text`, each from its keyword to its
/// closing brace; `None` when the text is not a sequence of brace-closed items
/// separated by blanks, separators and comments.
fn split(text: &str) -> Option<Vec<Span>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    loop {
        at = skip_gap(bytes, at);
        if at == bytes.len() {
            return Some(spans);
        }
        let span = item_at(bytes, at)?;
        spans.push(span);
        at = span.end;
    }
}

fn spans(text: &str) -> Option<Vec<(usize, usize)>> {
    split(text).map(|spans| spans.iter().map(|s| (s.start, s.end)).collect())
}

fn parsed(text: &str) -> Parsed {
    Parsed { text: text.to_owned(), file: parse(text).expect("valid") }
}

/// Re-parses `to` from a parse of `from` and checks the result against a full parse
/// of `to`; returns how many items were parsed, or `None` for a syntax error.
fn reparse_matches_parse(from: &Parsed, to: &str) -> Option<usize> {
    let mut again = from.clone();
    match (reparse(&mut again, to), parse(to)) {
        (Ok(fresh), Ok(file)) => {
            assert_eq!(again, Parsed { text: to.to_owned(), file }, "re-parsing {to:?}");
            Some(fresh)
        }
        (Err(e), Err(expected)) => {
            assert_eq!(e, expected, "the error of {to:?}");
            assert_eq!(&again, from, "a syntax error leaves the previous parse");
            None
        }
        (got, expected) => panic!("re-parsing {to:?}: {got:?}, but parse gives {expected:?}"),
    }
}

#[test]
fn split_finds_items_between_blanks_separators_and_comments() {
    let text = "# a { comment }\n;cluster { masquerade-all on } ;\tnode n { address 1 # } still open\n}node m{}\n";
    assert_eq!(spans(text), Some(vec![(17, 46), (49, 84), (84, 92)]));
    assert_eq!(spans(""), Some(vec![]));
    assert_eq!(spans("\r\n# only a comment"), Some(vec![]));
}

#[test]
fn a_comment_ends_at_any_line_break() {
    assert_eq!(spans("node n { # }\r}"), Some(vec![(0, 14)]));
    assert_eq!(spans("# {\rnode n {}"), Some(vec![(4, 13)]));
}

#[test]
fn split_gives_up_where_braces_do_not_pair() {
    for text in ["node n { address 1", "node n { { } }", "}", "node n", "node n {} x", "cluster { # }"] {
        assert_eq!(spans(text), None, "{text:?}");
    }
}

#[test]
fn an_item_that_does_not_parse_alone_is_left_to_the_full_parse() {
    assert!(parse_item("{ }", Span::new(0, 3)).is_none());
    assert!(parse_item("x node n\n{}", Span::new(2, 11)).is_none(), "the brace is not on the keyword's line");
    let item = parse_item("x node n { address 1 }", Span::new(2, 22)).expect("parses");
    assert_eq!((item.keyword, item.span), (Span::new(0, 4), Span::new(2, 22)), "the keyword counts from the item");
}

#[test]
fn one_changed_item_is_the_only_one_parsed() {
    let lab = parsed(EXAMPLES[4]);
    let changed = EXAMPLES[4].replace("10.0.170.93", "10.0.170.99");
    assert_eq!(reparse_matches_parse(&lab, &changed), Some(1));
    let grown = EXAMPLES[4].replace("cluster-cidr 10.244.0.0/16", "cluster-cidr 10.244.0.0/16 fd00::/64");
    assert_eq!(reparse_matches_parse(&lab, &grown), Some(1), "later items move");
    assert_eq!(reparse_matches_parse(&lab, &format!("# new first line\n{}", EXAMPLES[4])), Some(0));
}

#[test]
fn items_deleted_duplicated_swapped_and_edited() {
    for text in EXAMPLES {
        let before = parsed(text);
        let items = split(text).expect("the examples split");
        for (i, s) in items.iter().enumerate() {
            let item = &text[s.start..s.end];
            let deleted = format!("{}{}", &text[..s.start], &text[s.end..]);
            let duplicated = format!("{}{item}\n{item}{}", &text[..s.start], &text[s.end..]);
            let moved = format!("{}{}\n{item}\n", &text[..s.start], &text[s.end..]);
            let edited = format!("{}{}{}", &text[..s.start], item.replacen(" {", " { # edited\n", 1), &text[s.end..]);
            assert_eq!(reparse_matches_parse(&before, &deleted), Some(0));
            assert_eq!(reparse_matches_parse(&before, &duplicated), Some(1), "an old item is reused once");
            assert_eq!(reparse_matches_parse(&before, &moved), Some(0));
            assert_eq!(reparse_matches_parse(&before, &edited), Some(1));
            if let Some(next) = items.get(i + 1) {
                let swapped = format!(
                    "{}{}{}{item}{}",
                    &text[..s.start],
                    &text[next.start..next.end],
                    &text[s.end..next.start],
                    &text[next.end..]
                );
                assert_eq!(reparse_matches_parse(&before, &swapped), Some(0));
            }
        }
    }
}

#[test]
fn any_insertion_or_deletion_gives_the_full_parse() {
    for text in EXAMPLES {
        let before = parsed(text);
        let at: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(7).collect();
        for &i in &at {
            for insert in ["}", "{", ";", "\n", "\r", "#", " x ", "é", "node n {}"] {
                let mangled = format!("{}{insert}{}", &text[..i], &text[i..]);
                reparse_matches_parse(&before, &mangled);
                // And back again, from a parse of the mangled text when it has one.
                if let Ok(file) = parse(&mangled) {
                    reparse_matches_parse(&Parsed { text: mangled, file }, text);
                }
            }
            let end = text[i..].char_indices().nth(3).map_or(text.len(), |(n, _)| i + n);
            reparse_matches_parse(&before, &format!("{}{}", &text[..i], &text[end..]));
        }
    }
}

#[test]
fn a_bad_edit_keeps_the_last_good_parse_for_the_next() {
    let mut p = parsed(EXAMPLES[4]);
    let bad = EXAMPLES[4].replace("port 80/tcp target 8080 node-port 30080", "port 80");
    assert!(reparse(&mut p, &bad).is_err());
    assert_eq!(p, parsed(EXAMPLES[4]));
    let fixed = EXAMPLES[4].replace("node-port 30080", "node-port 30090");
    assert_eq!(reparse(&mut p, &fixed), Ok(1));
    assert_eq!(p, parsed(&fixed));
}
