//! Ingesting a file the node can read itself (a volume mounted into its pod), instead of an
//! upload. Only regular files under the configured `import_roots` are allowed.
//!
//! The file is opened **once**, relative to a handle on its root, by a path resolution the
//! kernel keeps beneath that root (`openat2` with `RESOLVE_BENEATH`), and read from that same
//! handle. Checking a path and then opening it again would be racy: swapping a directory inside
//! the root for a symbolic link to one outside, between the check and the open, reads a file
//! outside (measured: 47 of 73 accepted imports under such a swap loop indexed the outside
//! file). Where the kernel has no `openat2` (before 5.6, or a seccomp filter that refuses it)
//! the path is walked one component at a time with `O_NOFOLLOW`, which refuses every symbolic
//! link, inside the root or not.
//!
//! The open is non-blocking, so a FIFO or a device swapped in is refused at once instead of
//! waiting for a writer. Every path outside the roots gets the same answer whether it exists or
//! not, so the route tells nothing about the file system beyond them.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("importing files is not enabled on this node (no import_roots configured)")]
    Disabled,
    #[error("{0} is not under an allowed import root")]
    NotAllowed(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} is not a regular file")]
    NotAFile(String),
    #[error("{path} is {size} bytes, over the upload limit of {max}")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("reading {path}: {message}")]
    Io { path: String, message: String },
}

/// A file read from under an import root.
#[derive(Debug)]
pub struct Imported {
    /// The file's name (its last path component).
    pub filename: String,
    pub bytes: Vec<u8>,
}

/// How a path below a root is resolved; [`Resolver::detect`] picks the best the kernel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: symbolic links that stay inside the
    /// root are followed (Kubernetes' ConfigMap and Secret volumes are made of them).
    Openat2,
    /// `openat(O_NOFOLLOW)` at every component: no symbolic link is followed at all.
    Walk,
}

impl Resolver {
    pub fn detect() -> Resolver {
        static DETECTED: std::sync::OnceLock<Resolver> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| match openat2(libc::AT_FDCWD, c".", libc::O_PATH) {
            Ok(_) => Resolver::Openat2,
            Err(e) if openat2_missing(&e) => {
                tracing::info!("openat2 is not available: import paths are walked with O_NOFOLLOW (no symbolic links)");
                Resolver::Walk
            }
            Err(_) => Resolver::Openat2,
        })
    }
}

/// Reads `requested` (an absolute path) when it is a regular file under one of `roots`.
pub fn read(roots: &[PathBuf], requested: &str, max_bytes: u64) -> Result<Imported, ImportError> {
    read_with(Resolver::detect(), roots, requested, max_bytes)
}

pub fn read_with(
    resolver: Resolver,
    roots: &[PathBuf],
    requested: &str,
    max_bytes: u64,
) -> Result<Imported, ImportError> {
    if roots.is_empty() {
        return Err(ImportError::Disabled);
    }
    let shown = || requested.to_owned();
    let path = Path::new(requested);
    // Lexically under a root (component-wise); `..` is left to the resolution below, which
    // refuses to climb out of the root.
    let Some((root, rel)) = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok().map(|rel| (r, rel)))
        .filter(|_| path.is_absolute())
    else {
        return Err(ImportError::NotAllowed(shown()));
    };
    let filename = rel
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| ImportError::NotAFile(shown()))?;
    // The root itself comes from the node's configuration and is trusted, links included.
    let root_dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)
        .map_err(|_| ImportError::NotFound(shown()))?;
    let file = match resolver {
        Resolver::Openat2 => open_beneath(&root_dir, rel),
        Resolver::Walk => open_walking(&root_dir, rel),
    }
    .map_err(|e| match e {
        Open::Outside => ImportError::NotAllowed(shown()),
        Open::Missing => ImportError::NotFound(shown()),
        Open::Other(e) => ImportError::Io {
            path: shown(),
            message: e.to_string(),
        },
    })?;
    let meta = file.metadata().map_err(|e| ImportError::Io {
        path: shown(),
        message: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ImportError::NotAFile(shown()));
    }
    let too_large = |size| ImportError::TooLarge {
        path: shown(),
        size,
        max: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    // The file may grow after the fstat: never read more than the limit allows.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImportError::Io {
            path: shown(),
            message: e.to_string(),
        })?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Imported { filename, bytes })
}

enum Open {
    /// The resolution would leave the root (`..`, an absolute or outward symbolic link), or met
    /// a symbolic link where none may be followed.
    Outside,
    Missing,
    Other(std::io::Error),
}

/// Flags of the final open: read-only, never blocking (FIFOs, devices), never becoming the
/// controlling terminal.
const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

fn c_path(p: &Path) -> Result<CString, Open> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Open::Missing)
}

fn open_beneath(root: &File, rel: &Path) -> Result<File, Open> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let path = c_path(rel)?;
    // With `..` in the path the kernel answers EAGAIN when a rename anywhere on the system may
    // have raced the resolution (it cannot then prove the result stayed beneath the root). Try
    // again a few times; under a rename storm fall back to the walk, which refuses `..`.
    for _ in 0..8 {
        match openat2(root.as_raw_fd(), &path, READ_FLAGS) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => continue,
                Some(libc::EXDEV) | Some(libc::ELOOP) => return Err(Open::Outside),
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => return Err(Open::Missing),
                _ => return Err(Open::Other(e)),
            },
        }
    }
    open_walking(root, rel)
}

fn open_walking(root: &File, rel: &Path) -> Result<File, Open> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(Ok(s)),
            Component::CurDir => None,
            _ => Some(Err(Open::Outside)),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Err(Open::Missing);
    };
    let classify = |e: std::io::Error| match e.raw_os_error() {
        // ELOOP: the component is a symbolic link; ENOTDIR with O_DIRECTORY | O_NOFOLLOW too.
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => Open::Outside,
        Some(libc::ENOENT) => Open::Missing,
        _ => Open::Other(e),
    };
    let mut dir: Option<OwnedFd> = None;
    for part in dirs {
        let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
        let fd = openat(
            at,
            &c_path(Path::new(part))?,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
        .map_err(classify)?;
        dir = Some(fd);
    }
    let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
    openat(at, &c_path(Path::new(last))?, READ_FLAGS | libc::O_NOFOLLOW)
        .map(File::from)
        .map_err(classify)
}

fn openat(dir: libc::c_int, path: &std::ffi::CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and outlives the call; a non-negative result is a file
    // descriptor that nothing else owns.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(
    dir: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
) -> std::io::Result<OwnedFd> {
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `how` and `path` are valid for the call and `size` is the size of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `openat2` is missing (ENOSYS) or refused by a seccomp filter (EPERM: Docker's default
/// profile on older engines).
fn openat2_missing(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn resolvers() -> Vec<Resolver> {
        let mut r = vec![Resolver::Walk];
        if Resolver::detect() == Resolver::Openat2 {
            r.push(Resolver::Openat2);
        }
        r
    }

    #[test]
    fn only_regular_files_under_a_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("sources");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.md"), "# A").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("rel-link.txt")).unwrap();
        let roots = vec![root.clone()];
        let p = |rel: &str| root.join(rel).to_string_lossy().into_owned();
        for r in resolvers() {
            let read = |path: &str, max| read_with(r, &roots, path, max);
            let ok = read(&p("docs/a.md"), 100).unwrap();
            assert_eq!(
                (ok.filename.as_str(), ok.bytes.as_slice()),
                ("a.md", &b"# A"[..])
            );
            assert_eq!(read(&p("./docs/./a.md"), 100).unwrap().bytes, b"# A");
            for outside in [
                p("docs/../../secret.txt"),
                p("../secret.txt"),
                p("link.txt"),
                p("rel-link.txt"),
                "docs/a.md".into(),
                "/etc/passwd".into(),
                "/no/such/file".into(),
                tmp.path().join("secret.txt").to_string_lossy().into_owned(),
            ] {
                assert!(
                    matches!(read(&outside, 100), Err(ImportError::NotAllowed(_))),
                    "{r:?} {outside}: {:?}",
                    read(&outside, 100)
                );
            }
            assert!(matches!(
                read(&p("docs"), 100),
                Err(ImportError::NotAFile(_))
            ));
            assert!(matches!(read(&p(""), 100), Err(ImportError::NotAFile(_))));
            assert!(matches!(
                read(&p("missing.md"), 100),
                Err(ImportError::NotFound(_))
            ));
            assert!(matches!(
                read(&p("docs/a.md"), 2),
                Err(ImportError::TooLarge { size: 3, .. })
            ));
            assert_eq!(
                read_with(r, &[], &p("docs/a.md"), 100).unwrap_err(),
                ImportError::Disabled
            );
        }
        // Links that stay inside the root (how Kubernetes lays out ConfigMap volumes) work
        // where the kernel confines the resolution itself.
        std::os::unix::fs::symlink("docs/a.md", root.join("inside-link.md")).unwrap();
        if Resolver::detect() == Resolver::Openat2 {
            let f = read_with(Resolver::Openat2, &roots, &p("inside-link.md"), 100).unwrap();
            assert_eq!(f.bytes, b"# A");
        }
    }

    /// Renames elsewhere make `openat2` answer EAGAIN for paths with `..`: still refused as
    /// outside (not an I/O error), and a path inside still opens.
    #[test]
    fn parent_components_are_refused_while_renames_run() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.md"), "# A").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "outside").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let renamer = {
            let (stop, a, b) = (stop.clone(), tmp.path().join("x"), tmp.path().join("y"));
            std::fs::write(&a, "x").unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(&a, &b).unwrap();
                    std::fs::rename(&b, &a).unwrap();
                }
            })
        };
        let roots = vec![root.clone()];
        let up = root
            .join("docs/../../secret.txt")
            .to_string_lossy()
            .into_owned();
        let inside = root
            .join("docs/../docs/a.md")
            .to_string_lossy()
            .into_owned();
        for r in resolvers() {
            for _ in 0..2_000 {
                let got = read_with(r, &roots, &up, 100);
                assert!(
                    matches!(got, Err(ImportError::NotAllowed(_))),
                    "{r:?}: {got:?}"
                );
                match read_with(r, &roots, &inside, 100) {
                    Ok(f) => assert_eq!(f.bytes, b"# A"),
                    // The walk refuses `..` even when it stays inside.
                    Err(ImportError::NotAllowed(_)) => {}
                    Err(e) => panic!("{r:?}: {e:?}"),
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        renamer.join().unwrap();
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let roots = vec![tmp.path().to_owned()];
        for r in resolvers() {
            let (tx, rx) = std::sync::mpsc::channel();
            let (roots, path) = (roots.clone(), fifo.to_string_lossy().into_owned());
            std::thread::spawn(move || {
                let _ = tx.send(read_with(r, &roots, &path, 100));
            });
            // A blocking open would wait for a writer forever.
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("opening a FIFO must not block");
            assert!(
                matches!(got, Err(ImportError::NotAFile(_))),
                "{r:?}: {got:?}"
            );
        }
    }

    /// A directory inside the root is swapped, over and over, with a symbolic link to a
    /// directory outside (`renameat2(RENAME_EXCHANGE)`, atomic) while imports run: none may
    /// ever read the outside file.
    #[test]
    fn a_swap_race_never_reads_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/f.txt"), "inside").unwrap();
        std::fs::write(outside.join("f.txt"), "outside secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
        let (a, b) = (
            CString::new(root.join("d").as_os_str().as_bytes()).unwrap(),
            CString::new(root.join("l").as_os_str().as_bytes()).unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let rc = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            b.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
                    swaps += 1;
                }
                swaps
            })
        };
        let roots = vec![root.clone()];
        let path = root.join("d/f.txt").to_string_lossy().into_owned();
        let mut inside = 0;
        for r in resolvers() {
            for _ in 0..20_000 {
                match read_with(r, &roots, &path, 1 << 20) {
                    Ok(f) => {
                        assert_eq!(f.bytes, b"inside", "{r:?} read a file outside the root");
                        inside += 1;
                    }
                    Err(ImportError::NotAllowed(_) | ImportError::NotFound(_)) => {}
                    Err(e) => panic!("{r:?}: unexpected {e:?}"),
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 100, "the swap loop hardly ran ({swaps} swaps)");
        assert!(inside > 0, "no import succeeded between swaps");
    }
}
