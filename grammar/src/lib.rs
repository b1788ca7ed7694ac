//! The svcnft policy language: a pest grammar and a parser into an AST whose every
//! node carries its source span.
