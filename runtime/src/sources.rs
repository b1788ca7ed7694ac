//! Reading policy paths: the one side effect before checking.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use svcnft_compiler::SourceFile;

/// Why a policy path could not be read; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("{}: no *.svc files in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
}

/// Reads every POLICY path: a file is read as is; a directory contributes its
/// `*.svc` files (not recursively), in name order. A directory without any is an
/// error, since an empty policy is almost certainly a wrong path.
pub fn read_policy(paths: &[PathBuf]) -> Result<Vec<SourceFile>, ReadError> {
    let mut files = Vec::new();
    for path in paths {
        let io = |source| ReadError::Io { path: path.clone(), source };
        if fs::metadata(path).map_err(io)?.is_dir() {
            let mut entries = Vec::new();
            for entry in fs::read_dir(path).map_err(io)? {
                let entry = entry.map_err(io)?.path();
                if entry.extension().is_some_and(|e| e == "svc") && entry.is_file() {
                    entries.push(entry);
                }
            }
            if entries.is_empty() {
                return Err(ReadError::EmptyDirectory { path: path.clone() });
            }
            entries.sort();
            for entry in &entries {
                files.push(read_file(entry)?);
            }
        } else {
            files.push(read_file(path)?);
        }
    }
    Ok(files)
}

fn read_file(path: &Path) -> Result<SourceFile, ReadError> {
    let bytes = fs::read(path).map_err(|source| ReadError::Io { path: path.to_owned(), source })?;
    let text = String::from_utf8(bytes).map_err(|_| ReadError::NotText { path: path.to_owned() })?;
    Ok(SourceFile { name: path.display().to_string(), text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("svcnft-sources-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    #[test]
    fn directory_reads_svc_files_in_name_order() {
        let dir = scratch("order");
        fs::write(dir.join("b.svc"), "# b").unwrap();
        fs::write(dir.join("a.svc"), "# a").unwrap();
        fs::write(dir.join("c.txt"), "# c").unwrap();
        let files = read_policy(std::slice::from_ref(&dir)).unwrap();
        let texts: Vec<&str> = files.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["# a", "# b"]);
        assert_eq!(files[0].name, dir.join("a.svc").display().to_string());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_path() {
        let dir = scratch("errors");
        let missing = dir.join("missing.svc");
        let err = read_policy(std::slice::from_ref(&missing)).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
        let err = read_policy(std::slice::from_ref(&dir)).unwrap_err();
        assert!(matches!(err, ReadError::EmptyDirectory { .. }));
        fs::write(dir.join("bad.svc"), [0xff, 0xfe]).unwrap();
        assert!(matches!(read_policy(std::slice::from_ref(&dir)), Err(ReadError::NotText { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}
