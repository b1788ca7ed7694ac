//! Errors and warnings located in the policy source, and their rendering as
//! `FILE:LINE:COL: error: MESSAGE`, the source line and a caret line.

use std::fmt::Write as _;

use codespan_reporting::files::{Files as _, SimpleFiles};
use svcnft_grammar::Span;

/// One policy file as read: its name for diagnostics, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// A message about a span of one file (an index into the checked files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: usize,
    pub span: Span,
    pub message: String,
}

/// Every diagnostic of one check, in source order once sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("the policy has {} error(s)", self.errors())]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, severity: Severity, file: usize, span: Span, message: String) {
        self.0.push(Diagnostic { severity, file, span, message });
    }

    pub fn errors(&self) -> usize {
        self.0.iter().filter(|d| d.severity == Severity::Error).count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Orders by file, then position, so output follows the source.
    pub(crate) fn sort(&mut self) {
        self.0.sort_by_key(|d| (d.file, d.span.start, d.span.end));
    }

    /// Renders every diagnostic; `files` are the files the check was given.
    pub fn render(&self, files: &[SourceFile]) -> String {
        let mut db = SimpleFiles::new();
        for f in files {
            db.add(f.name.as_str(), f.text.as_str());
        }
        let mut out = String::new();
        for d in &self.0 {
            render_one(&db, d, &mut out);
        }
        out
    }
}

fn render_one(db: &SimpleFiles<&str, &str>, d: &Diagnostic, out: &mut String) {
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let (Ok(name), Ok(text), Ok(loc)) = (db.name(d.file), db.source(d.file), db.location(d.file, d.span.start)) else {
        let _ = writeln!(out, "{severity}: {}", d.message);
        return;
    };
    let _ = writeln!(out, "{name}:{}:{}: {severity}: {}", loc.line_number, loc.column_number, d.message);
    let Ok(range) = db.line_range(d.file, loc.line_number - 1) else {
        return;
    };
    let line = text[range.clone()].trim_end_matches(['\n', '\r']);
    let offset = |at: usize| at.saturating_sub(range.start).min(line.len());
    let before = line.get(..offset(d.span.start)).unwrap_or(line);
    let marked = line.get(before.len()..offset(d.span.end)).unwrap_or("");
    // Tabs are kept so the caret lines up under the text whatever the tab width.
    let pad: String = before.chars().map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    let carets = "^".repeat(marked.chars().count().max(1));
    let _ = writeln!(out, "{line}\n{pad}{carets}");
}
