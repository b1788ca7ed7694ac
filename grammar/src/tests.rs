use super::*;

fn texts(words: &[Word]) -> Vec<&str> {
    words.iter().map(|w| w.text.as_str()).collect()
}

fn error(text: &str) -> SyntaxError {
    parse(text).expect_err("input is invalid")
}

#[test]
fn empty_and_comment_only_files() {
    assert_eq!(parse("").unwrap(), File::default());
    assert_eq!(parse("# nothing\n\n  # here\n").unwrap(), File::default());
}

#[test]
fn one_line_block_with_semicolons() {
    let file = parse("node n1 { address 10.0.0.1 fd00::1; pod-cidr 10.1.0.0/24 }").unwrap();
    let [item] = file.items.as_slice() else { panic!("one item") };
    assert_eq!(item.keyword, Span::new(0, 4));
    let ItemKind::Node { name, body } = &item.kind else { panic!("a node") };
    assert_eq!(name.text, "n1");
    assert_eq!(name.span, Span::new(5, 7));
    assert_eq!(body.len(), 2);
    assert_eq!(body[0].kind, NodeStmt::Address(body_words(&body[0])));
    let NodeStmt::Address(addrs) = &body[0].kind else { panic!("address") };
    assert_eq!(texts(addrs), ["10.0.0.1", "fd00::1"]);
    assert_eq!(body[1].span, Span::new(36, 56));
}

fn body_words(stmt: &Stmt<NodeStmt>) -> Vec<Word> {
    match &stmt.kind {
        NodeStmt::Address(w) | NodeStmt::LocalAddress(w) | NodeStmt::PodCidr(w) => w.clone(),
        NodeStmt::Zone(w) => vec![w.clone()],
    }
}

#[test]
fn statement_ends_at_closing_brace_and_comments() {
    let file = parse("cluster { # c\n  masquerade-all on # why\n\n  node-port-range 1-2 }\n").unwrap();
    let ItemKind::Cluster(body) = &file.items[0].kind else { panic!("cluster") };
    assert_eq!(body.len(), 2);
    assert!(matches!(&body[1].kind, ClusterStmt::NodePortRange(w) if w.text == "1-2"));
}

#[test]
fn port_statement_shapes() {
    let file = parse("service a/b {\n port 80/tcp\n port http 8080/udp target web node-port 30080\n}").unwrap();
    let ItemKind::Service { name, body } = &file.items[0].kind else { panic!("service") };
    assert_eq!((name.namespace.text.as_str(), name.name.text.as_str()), ("a", "b"));
    let ServiceStmt::Port(p) = &body[0].kind else { panic!("port") };
    assert_eq!((p.name.as_ref(), p.port.text.as_str(), p.protocol.text.as_str()), (None, "80", "tcp"));
    let ServiceStmt::Port(p) = &body[1].kind else { panic!("port") };
    assert_eq!(p.name.as_ref().map(|w| w.text.as_str()), Some("http"));
    assert_eq!(p.protocol.text, "udp");
    assert_eq!(
        p.options,
        [
            PortOption::Target(Word { text: "web".into(), span: Span::new(54, 57) }),
            PortOption::NodePort(Word { text: "30080".into(), span: Span::new(68, 73) }),
        ]
    );
}

#[test]
fn values_are_lexed_loosely_for_the_checker() {
    let file = parse("service a/b { port 0/icmp; type nonsense; cluster-ip 10.0.0.1/8 }").unwrap();
    let ItemKind::Service { body, .. } = &file.items[0].kind else { panic!("service") };
    assert_eq!(body.len(), 3);
}

#[test]
fn endpoint_options_and_lists() {
    let file = parse(
        "endpoints ns/s {\n port http 8080\n port 81\n endpoint 10.0.0.1 node n zone z terminating not-serving hint-zones a b hint-nodes c ready\n}",
    )
    .unwrap();
    let ItemKind::Endpoints { body, .. } = &file.items[0].kind else { panic!("endpoints") };
    assert!(
        matches!(&body[0].kind, EndpointsStmt::Port { name: Some(n), port } if n.text == "http" && port.text == "8080")
    );
    assert!(matches!(&body[1].kind, EndpointsStmt::Port { name: None, port } if port.text == "81"));
    let EndpointsStmt::Endpoint(e) = &body[2].kind else { panic!("endpoint") };
    let described: Vec<String> = e
        .options
        .iter()
        .map(|o| match o {
            EndpointOption::Node(w) => format!("node {}", w.text),
            EndpointOption::Zone(w) => format!("zone {}", w.text),
            EndpointOption::Condition(w) => w.text.clone(),
            EndpointOption::HintZones(w) => format!("hint-zones {}", texts(w).join(" ")),
            EndpointOption::HintNodes(w) => format!("hint-nodes {}", texts(w).join(" ")),
        })
        .collect();
    assert_eq!(
        described,
        ["node n", "zone z", "terminating", "not-serving", "hint-zones a b", "hint-nodes c", "ready"]
    );
}

#[test]
fn session_affinity_with_timeout() {
    let file = parse("service a/b { session-affinity client-ip timeout 3h }").unwrap();
    let ItemKind::Service { body, .. } = &file.items[0].kind else { panic!("service") };
    assert!(matches!(&body[0].kind,
        ServiceStmt::SessionAffinity { mode, timeout: Some(t) } if mode.text == "client-ip" && t.text == "3h"));
}

#[test]
fn opening_brace_must_be_on_the_keyword_line() {
    let e = error("node n1\n{ address 10.0.0.1 }");
    assert_eq!(e.span, Span::new(7, 8));
    assert_eq!(e.message, "expected `{` on the line of its keyword, found end of line");
}

#[test]
fn unknown_statement_is_a_syntax_error() {
    let e = error("cluster {\n  frobnicate 1\n}");
    assert_eq!(e.span, Span::new(12, 22));
    assert!(e.message.contains("found `frobnicate`"), "{}", e.message);
}

#[test]
fn a_list_runs_to_the_end_of_its_statement() {
    let file = parse("node n { address 10.0.0.1 zone z }").unwrap();
    let ItemKind::Node { body, .. } = &file.items[0].kind else { panic!("node") };
    assert_eq!(texts(&body_words(&body[0])), ["10.0.0.1", "zone", "z"]);
}

#[test]
fn single_value_statement_takes_one_value() {
    let e = error("node n { zone a b }");
    assert_eq!(e.span, Span::new(16, 17));
    assert_eq!(e.message, "expected end of statement or `}`, found `b`");
}

#[test]
fn missing_protocol() {
    let e = error("service a/b { port 80 }");
    assert_eq!(e.message, "expected PORT/PROTO, found `}`");
}

#[test]
fn keywords_need_a_delimiter() {
    assert!(parse("nodes n { address 10.0.0.1 }").is_err());
    assert!(parse("service ab { }").is_err());
}

#[test]
fn never_panics_on_odd_input() {
    for text in
        ["{", "}", "node", "node n {", "service /", "endpoints a/b { endpoint }", "\r", "é", "node n{address 1;;;}"]
    {
        let _ = parse(text);
    }
}

#[test]
fn unknown_item_lists_the_items() {
    let e = error("# top\nfoo bar\n");
    assert_eq!(e.span, Span::new(6, 9));
    assert_eq!(
        e.message,
        "expected end of file, end of statement, `cluster`, `node`, `service` or `endpoints`, found `foo`"
    );
}

#[test]
fn unknown_statement_lists_the_statements_of_its_block() {
    let e = error("node n {\n  address 10.0.0.1\n  gateway 10.0.0.254\n}");
    assert_eq!(
        e.message,
        "expected end of statement, `}`, `address`, `local-address`, `pod-cidr` or `zone`, found `gateway`"
    );
}

/// A file of about 600 KiB (two parts' worth): items of every kind between blanks, separators,
/// comments and all three line ends.
fn large_file() -> String {
    let mut text = String::from("# a large policy\r\ncluster { service-cidr 10.96.0.0/12 }\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "node n{i} {{ address 10.0.{}.{}; pod-cidr 10.1.0.0/24 }} ; # node {i}\r\
             service default/s{i} {{\n    cluster-ip 10.96.{}.{}\n    port 80/tcp # web\n}}\r\n\n\
             endpoints default/s{i} {{ endpoint 10.1.0.{} node n{i} }}\n",
            i / 256,
            i % 256,
            i / 256,
            i % 256,
            i % 250 + 1,
        ));
    }
    assert!(text.len() > 2 * PARSE_IN_PARTS_ABOVE);
    text
}

#[test]
fn a_large_file_parses_in_parts_to_what_it_parses_whole() {
    let text = large_file();
    let whole = parse_whole(&text).unwrap();
    assert_eq!(whole.items.len(), 9001);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert_eq!(in_parts(&text).expect("the file splits into items"), whole);
    }
    assert_eq!(parse(&text).unwrap(), whole);
}

#[test]
fn a_large_file_with_an_error_reports_what_the_whole_parse_does() {
    let text = large_file();
    // An error in the last part, then one in the first: the first is reported.
    let late = format!("{text}service default/x {{ port 80/tcp\n");
    assert_eq!(parse(&late), parse_whole(&late));
    assert!(parse(&late).is_err());
    let both = format!("node bad {{ address }}\n{late}");
    let error = parse(&both).unwrap_err();
    assert_eq!(Err(error.clone()), parse_whole(&both));
    assert!(error.span.start < 30, "{error:?}");
}

#[test]
fn a_valid_file_recovers_to_its_parse() {
    let text = "node n1 { address 10.0.0.1 }\n";
    assert_eq!(parse_recovering(text), Ok(parse(text).unwrap()));
}

#[test]
fn every_broken_item_reports_its_error_and_the_others_parse() {
    let text = "node n1 { address 10.0.0.1 }\nservice a/b {\n    bogus 1\n}\nnode n2 { address 10.0.0.2 }\n\
                service a/c { port 80/tcp; what }\nendpoints a/b { endpoint 10.1.0.1 }\n";
    let recovered = parse_recovering(text).unwrap_err();
    assert_eq!(recovered.errors[0], parse(text).unwrap_err(), "the first error is the whole parse's");
    let starts: Vec<usize> = recovered.errors.iter().map(|e| e.span.start).collect();
    assert_eq!(starts, [text.find("bogus").unwrap(), text.find("what").unwrap()]);
    let kinds: Vec<&str> = recovered
        .file
        .items
        .iter()
        .map(|i| match &i.kind {
            ItemKind::Node { name, .. } => name.text.as_str(),
            ItemKind::Endpoints { .. } => "endpoints",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["n1", "n2", "endpoints"]);
    assert_eq!(recovered.file.items[1].span.start, text.find("node n2").unwrap(), "items keep their place");
    let broken: Vec<(&str, Option<&str>)> =
        recovered.broken.iter().map(|b| (b.keyword.as_str(), b.name.as_deref())).collect();
    assert_eq!(broken, [("service", Some("a/b")), ("service", Some("a/c"))]);
}

#[test]
fn a_missing_brace_breaks_one_item_up_to_the_next_keyword_line() {
    let text = "service x/y { port 80/tcp\nservice z/w { cluster-ip 10.0.0.1 }\n";
    let recovered = parse_recovering(text).unwrap_err();
    assert_eq!(recovered.errors, [parse(text).unwrap_err()]);
    assert_eq!(recovered.broken, [BrokenItem { keyword: "service".into(), name: Some("x/y".into()) }]);
    let [item] = recovered.file.items.as_slice() else { panic!("the second service parses") };
    assert_eq!(item.span.start, text.find("service z/w").unwrap());
}

#[test]
fn a_brace_on_the_next_line_still_names_the_broken_item() {
    let text = "service a/b\n{\n    port 80/tcp\n}\nendpoints a/b { endpoint 10.0.0.1 }\n";
    let recovered = parse_recovering(text).unwrap_err();
    assert_eq!(recovered.errors, [parse(text).unwrap_err()]);
    assert_eq!(recovered.broken, [BrokenItem { keyword: "service".into(), name: Some("a/b".into()) }]);
    assert_eq!(recovered.file.items.len(), 1, "the endpoints block parses");
}

#[test]
fn an_indented_item_after_a_missing_brace_gives_one_error_in_any_line_ending() {
    for line_end in ["\n", "\r\n", "\r"] {
        let text = ["service a/b {", "  port 80/tcp", "  service c/d { cluster-ip 10.0.0.1 }", ""].join(line_end);
        let recovered = parse_recovering(&text).unwrap_err();
        assert_eq!(recovered.errors, [parse(&text).unwrap_err()], "{line_end:?}");
        assert_eq!(recovered.file.items.len(), 1, "{line_end:?}: the second service parses");
    }
}
