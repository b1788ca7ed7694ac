//! Checking a policy edit by edit, as the node agent does.
//!
//! Endpoints come and go far more often than services, nodes or the cluster
//! block change. So after a valid check, an edit whose only changes are inside
//! `endpoints` blocks (same items, same order, same service names) re-checks just
//! those blocks, against the services and nodes of the last check, and shares
//! every other service with the last policy. Any other edit is checked in full.
//! Either way the result is that of [`check`](super::check).

use std::sync::Arc;

use svcnft_grammar::incremental::{reparse, Parsed};
use svcnft_grammar::{recover, File, Item, ItemKind, Recovered, SyntaxError};
use xxhash_rust::xxh3::xxh3_64;

use super::{check_linked, warn_unresolved_targets, Checked, Checker, Links, Origin};
use crate::diagnostics::{Diagnostics, SourceFile};
use crate::policy::Service;

/// The parses and the last valid check of a policy, from one check to the next:
/// pest runs only on the items whose text changed, and the checker only on the
/// `endpoints` blocks that changed, when nothing else did.
#[derive(Debug, Default)]
pub struct Incremental {
    /// By file position: a file's items are matched by their text, so a file that
    /// moves to another position costs a parse but never a wrong result.
    files: Vec<Parsed>,
    last: Option<Last>,
}

/// The last valid check, and the items it was made of.
#[derive(Debug)]
struct Last {
    checked: Checked,
    links: Links,
    /// Per item, in policy order.
    items: Vec<Print>,
}

/// Where an item is and a hash of its text: equal prints, equal items.
#[derive(Debug, Clone, Copy)]
struct Print {
    file: usize,
    start: usize,
    hash: u64,
}

impl Incremental {
    /// Checks `files` as [`check`](super::check) does.
    pub fn check(&mut self, files: &[SourceFile]) -> Result<Checked, Diagnostics> {
        let parsed = parse(&mut self.files, files);
        let asts: Option<Vec<&File>> = parsed.iter().map(|p| p.as_ref().ok().copied()).collect();
        let Some(asts) = asts else {
            // Syntax errors: the files that parse keep their parse, the others are
            // read on item by item, so that every error is reported; `last` stays.
            let recovered: Vec<Result<&File, Recovered>> = parsed
                .into_iter()
                .zip(files)
                .map(|(parse, file)| parse.map_err(|first| recover(&file.text, first)))
                .collect();
            return check_linked(recovered.iter().map(|r| r.as_ref().map(|file| *file))).0;
        };
        let items: Vec<(usize, &Item)> =
            asts.iter().enumerate().flat_map(|(file, ast)| ast.items.iter().map(move |item| (file, item))).collect();
        let prints: Vec<Print> = items
            .iter()
            .map(|&(file, item)| Print {
                file,
                start: item.span.start,
                hash: xxh3_64(&files[file].text.as_bytes()[item.span.start..item.span.end]),
            })
            .collect();
        if let Some(last) = &mut self.last {
            if let Some(edit) = endpoints_edit(last, &items, &prints) {
                if let Ok(checked) = &edit.result {
                    last.checked = checked.clone();
                    last.links.named_targets = edit.named_targets;
                    last.items = prints;
                }
                return edit.result;
            }
        }
        let (result, links) = check_linked(asts.into_iter().map(Ok));
        if let (Ok(checked), Some(links)) = (&result, links) {
            self.last = Some(Last { checked: checked.clone(), links, items: prints });
        }
        result
    }
}

/// Parses `files`, reusing the unchanged items of the previous parses.
fn parse<'p>(parsed: &'p mut Vec<Parsed>, files: &[SourceFile]) -> Vec<Result<&'p File, SyntaxError>> {
    parsed.resize_with(files.len(), Parsed::default);
    let results: Vec<_> = parsed.iter_mut().zip(files).map(|(p, f)| reparse(p, &f.text)).collect();
    results.into_iter().zip(parsed.iter()).map(|(result, p)| result.map(|_| &p.file)).collect()
}

/// The check of an edit that changed only `endpoints` blocks of `last`.
struct EndpointsEdit {
    result: Result<Checked, Diagnostics>,
    /// As in `last`, moved to where the edit put their items.
    named_targets: Vec<Vec<(usize, Origin)>>,
}

/// Checks an edit of `last` that changed only `endpoints` blocks; `None` for
/// any other edit, which needs a full check.
fn endpoints_edit(last: &Last, items: &[(usize, &Item)], prints: &[Print]) -> Option<EndpointsEdit> {
    let mut changed = Vec::new();
    if prints.len() != last.items.len() {
        return None;
    }
    for (index, (new, old)) in prints.iter().zip(&last.items).enumerate() {
        if new.file != old.file {
            return None;
        }
        if new.hash == old.hash {
            continue;
        }
        // Only a block that still belongs to the same service.
        let block = match (&items[index].1.kind, last.links.endpoints_items.get(&index)) {
            (ItemKind::Endpoints { name, body }, Some(&service)) => {
                let owner = &last.checked.policy.services[service].name;
                (name.namespace.text == owner.namespace && name.name.text == owner.name).then_some((service, body))
            }
            _ => None,
        };
        let (service, body) = block?;
        changed.push((index, service, body));
    }

    let mut policy = last.checked.policy.clone();
    let mut checker = Checker { node_names: last.links.node_names.clone(), ..Checker::default() };
    for (index, service, body) in changed {
        checker.enter(index, items[index]);
        let old = &policy.services[service];
        let endpoints = checker.endpoints_block(body, Some(&old.ports));
        policy.services[service] = Arc::new(Service { endpoints: Some(endpoints), ..Service::clone(old) });
    }
    // Earlier items may have grown or shrunk: the warnings' places move with their item.
    let named_targets: Vec<Vec<(usize, Origin)>> = last
        .links
        .named_targets
        .iter()
        .zip(&last.links.service_items)
        .map(|(targets, &item)| {
            let (from, to) = (last.items[item].start, prints[item].start);
            targets
                .iter()
                .map(|&(port, origin)| {
                    let span = svcnft_grammar::Span::new(origin.span.start - from + to, origin.span.end - from + to);
                    (port, Origin { span, ..origin })
                })
                .collect()
        })
        .collect();
    let mut diags = checker.diags;
    warn_unresolved_targets(&policy.services, &named_targets, &mut diags);
    diags.sort();
    let result = if diags.errors() > 0 { Err(diags) } else { Ok(Checked { policy, warnings: diags }) };
    Some(EndpointsEdit { result, named_targets })
}
