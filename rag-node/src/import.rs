//! Ingesting a file the node can read itself (a volume mounted into its pod), instead of an
//! upload. Only files under the configured `import_roots` are allowed; the path is resolved
//! (symbolic links and `..` included) before that check, so nothing outside can be reached.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("importing files is not enabled on this node (no import_roots configured)")]
    Disabled,
    #[error("{0} is not under an allowed import root")]
    NotAllowed(String),
    #[error("{0} does not exist or is not a regular file")]
    NotFound(String),
    #[error("{path} is {size} bytes, over the upload limit of {max}")]
    TooLarge { path: String, size: u64, max: u64 },
}

/// The real path of `requested` when it is a regular file inside one of `roots`.
pub fn resolve(roots: &[PathBuf], requested: &str, max_bytes: u64) -> Result<PathBuf, ImportError> {
    if roots.is_empty() {
        return Err(ImportError::Disabled);
    }
    let shown = requested.to_owned();
    let path = Path::new(requested);
    if !path.is_absolute() {
        return Err(ImportError::NotAllowed(shown));
    }
    let real = std::fs::canonicalize(path).map_err(|_| ImportError::NotFound(shown.clone()))?;
    let inside = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| real.starts_with(&r));
    if !inside {
        return Err(ImportError::NotAllowed(shown));
    }
    let meta = std::fs::metadata(&real).map_err(|_| ImportError::NotFound(shown.clone()))?;
    if !meta.is_file() {
        return Err(ImportError::NotFound(shown));
    }
    if meta.len() > max_bytes {
        return Err(ImportError::TooLarge {
            path: shown,
            size: meta.len(),
            max: max_bytes,
        });
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_a_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("sources");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.md"), "# A").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("link.txt")).unwrap();
        let roots = vec![root.clone()];
        let p = |rel: &str| root.join(rel).to_string_lossy().into_owned();

        assert_eq!(
            resolve(&roots, &p("docs/a.md"), 100).unwrap(),
            std::fs::canonicalize(root.join("docs/a.md")).unwrap()
        );
        assert!(matches!(
            resolve(&roots, &p("docs/../../secret.txt"), 100),
            Err(ImportError::NotAllowed(_))
        ));
        assert!(matches!(
            resolve(&roots, &p("link.txt"), 100),
            Err(ImportError::NotAllowed(_))
        ));
        assert!(matches!(
            resolve(&roots, "docs/a.md", 100),
            Err(ImportError::NotAllowed(_))
        ));
        assert!(matches!(
            resolve(&roots, &p("docs"), 100),
            Err(ImportError::NotFound(_))
        ));
        assert!(matches!(
            resolve(&roots, &p("missing.md"), 100),
            Err(ImportError::NotFound(_))
        ));
        assert!(matches!(
            resolve(&roots, &p("docs/a.md"), 2),
            Err(ImportError::TooLarge { size: 3, .. })
        ));
        assert_eq!(
            resolve(&[], &p("docs/a.md"), 100),
            Err(ImportError::Disabled)
        );
    }
}
