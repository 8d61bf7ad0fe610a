//! tantivy's memory-mapped directory with its fsyncs deferred to [`DeferredSync::sync`].
//!
//! Why: every tantivy commit writes a new segment (about ten small files) and `meta.json`,
//! and `MmapDirectory` fsyncs each of them, the directory too. One commit per ingested
//! document made that the largest cost the keyword index added to ingestion. Durability of
//! the keyword index does not need it: LMDB is the durable truth, and `Index` keeps every
//! document whose keyword commit has not been synced marked pending in LMDB until
//! [`DeferredSync::sync`] has run, so a machine crash that loses unsynced tantivy writes
//! leaves an index that is behind (replayed from the marks at the next start) or damaged
//! (detected at open by [`super::KeywordIndex::open`]'s checksums, then rebuilt). A process
//! crash (`kill -9`) loses nothing: the writes are in the page cache.
//!
//! Reads, deletes, locks and watches are `MmapDirectory`'s own.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};

#[derive(Debug, Clone)]
pub struct DeferredSync {
    root: PathBuf,
    inner: MmapDirectory,
    /// Files written since the last sync (relative to `root`).
    unsynced: Arc<Mutex<HashSet<PathBuf>>>,
    /// Names the temporary files of atomic writes apart (two may run at once).
    temp_counter: Arc<AtomicU64>,
    /// The latest content of tantivy's list of its files, not yet written (see
    /// [`Directory::atomic_write`] below).
    managed_list: Arc<Mutex<Option<Vec<u8>>>>,
}

/// tantivy's list of the files it manages (for its garbage collection), rewritten whole each
/// time it creates a file: about ten times per commit.
const MANAGED_LIST: &str = ".managed.json";
/// tantivy's commit point.
const META: &str = "meta.json";

impl DeferredSync {
    pub fn open(root: &Path) -> anyhow::Result<DeferredSync> {
        Ok(DeferredSync {
            root: root.to_owned(),
            inner: MmapDirectory::open(root)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", root.display()))?,
            unsynced: Arc::default(),
            temp_counter: Arc::default(),
            managed_list: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn unsynced(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every file written so far durable, then the directory (new names, renames and
    /// removals). Files deleted in the meantime are skipped.
    pub fn sync(&self) -> io::Result<()> {
        self.write_managed_list()?;
        let files: Vec<PathBuf> = self.unsynced().iter().cloned().collect();
        for f in &files {
            match File::open(self.root.join(f)) {
                Ok(file) => file.sync_data()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        File::open(&self.root)?.sync_all()?;
        let mut unsynced = self.unsynced();
        for f in &files {
            unsynced.remove(f);
        }
        Ok(())
    }
}

impl DeferredSync {
    fn write_managed_list(&self) -> io::Result<()> {
        let mut pending = self.managed_list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(data) = pending.take() {
            if let Err(e) = self.replace(Path::new(MANAGED_LIST), &data) {
                *pending = Some(data);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes `data` to a temporary file and renames it over `path`.
    fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let temp = self
            .root
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let written = (|| {
            let mut f = File::create(&temp)?;
            f.write_all(data)?;
            f.flush()?;
            std::fs::rename(&temp, self.root.join(path))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        self.unsynced().insert(path.to_owned());
        Ok(())
    }
}

/// A file writer whose `terminate` flushes to the OS without syncing.
struct Unsynced(File);

impl Write for Unsynced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl TerminatingWrite for Unsynced {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.0.flush()
    }
}

impl Directory for DeferredSync {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)?;
        self.unsynced().remove(path);
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        // As MmapDirectory: tantivy's files are written once, never overwritten.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.root.join(path))
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    OpenWriteError::FileAlreadyExists(path.to_owned())
                } else {
                    OpenWriteError::wrap_io_error(e, path.to_owned())
                }
            })?;
        self.unsynced().insert(path.to_owned());
        Ok(BufWriter::new(Box::new(Unsynced(file))))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        if path == Path::new(MANAGED_LIST) {
            if let Some(data) = &*self.managed_list.lock().unwrap_or_else(|e| e.into_inner()) {
                return Ok(data.clone());
            }
        }
        self.inner.atomic_read(path)
    }

    /// A temporary file renamed over `path`: readers see the old or the new content, never a
    /// part (what tantivy needs of `meta.json`); durable at the next sync.
    ///
    /// tantivy's list of its files is kept in memory and written just before the next commit
    /// point (`meta.json`), not at each of its ten or so rewrites per commit: creating and
    /// removing that many files per document was, with the segments' own, the largest cost
    /// of a commit (ext4's inode allocation scans recently deleted inodes). On disk the list
    /// still names every file the commit point does. A crash can leave unlisted the files
    /// written since the last commit point (an interrupted commit's or merge's), which
    /// tantivy then never removes: a few files, gone at the next rebuild.
    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if path == Path::new(MANAGED_LIST) {
            *self.managed_list.lock().unwrap_or_else(|e| e.into_inner()) = Some(data.to_vec());
            return Ok(());
        }
        if path == Path::new(META) {
            self.write_managed_list()?;
        }
        self.replace(path, data)
    }

    /// Deferred: [`DeferredSync::sync`] syncs the directory with the files.
    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}
