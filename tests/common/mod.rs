//! Helpers shared by the integration tests.

use std::path::PathBuf;

use svcnft_compiler::{Policy, SourceFile};
use svcnft_runtime::sources::read_policy;

/// Every example policy, checked (no warnings), with its file stem, in name order.
pub fn examples() -> Vec<(String, Policy)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "svc"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "an example per feature");
    paths
        .into_iter()
        .map(|path| {
            let files: Vec<SourceFile> = read_policy(std::slice::from_ref(&path)).expect("readable example");
            let checked = svcnft_compiler::check(&files).unwrap_or_else(|d| panic!("{}", d.render(&files)));
            assert!(checked.warnings.is_empty(), "{}", checked.warnings.render(&files));
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, checked.policy)
        })
        .collect()
}
