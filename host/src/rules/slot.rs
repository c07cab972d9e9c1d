//! The running pack (or stack of packs) and its replacement (hot reload).
//! A new version is loaded, compiled and the test cases of every pack in
//! the stack run before it takes over; a pack that fails any of that leaves
//! the last good one running, and is not tried again until its files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use super::{Pack, RuleError, cases};

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The pack's files are as they were: nothing to do.
    Unchanged,
    /// The new version runs now.
    Replaced {
        from: String,
        to: String,
        /// Its test cases that passed before it took over.
        cases: usize,
    },
    /// The new files were refused; `running` is still in charge.
    Refused { running: String, error: RuleError },
}

/// Holds the pack in use; cheap to read from every cycle.
pub struct PackSlot {
    /// The stack's directories, bottom first.
    dirs: Vec<PathBuf>,
    current: RwLock<Arc<Pack>>,
    /// Fingerprint of the files last tried (good or not).
    tried: Mutex<String>,
}

impl PackSlot {
    /// Wraps a loaded pack.
    pub fn new(pack: Pack) -> Self {
        Self::stacked(vec![pack.dir.clone()], pack)
    }

    /// Wraps a stack loaded from `dirs` (bottom first).
    pub fn stacked(dirs: Vec<PathBuf>, pack: Pack) -> Self {
        let tried = fingerprint_all(&dirs).unwrap_or_default();
        Self {
            dirs,
            current: RwLock::new(Arc::new(pack)),
            tried: Mutex::new(tried),
        }
    }

    /// The pack in use.
    pub fn get(&self) -> Arc<Pack> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads when the pack's files changed since they were last tried
    /// (or always, with `force`, as on SIGHUP).
    pub fn reload(&self, force: bool) -> Reload {
        let running = self.get().id();
        let now = match fingerprint_all(&self.dirs) {
            Ok(f) => f,
            Err(error) => return Reload::Refused { running, error },
        };
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *tried == now {
                return Reload::Unchanged;
            }
            *tried = now;
        }
        let next = match Pack::load_stack(&self.dirs) {
            Ok(p) => p,
            Err(error) => return Reload::Refused { running, error },
        };
        // Each pack's cases test that pack on its own.
        let mut passed = 0;
        for dir in &self.dirs {
            let one = if self.dirs.len() == 1 {
                cases::gate(&next)
            } else {
                Pack::load(dir).and_then(|p| cases::gate(&p))
            };
            match one {
                Ok(n) => passed += n,
                Err(error) => return Reload::Refused { running, error },
            }
        }
        let to = next.id();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Reload::Replaced {
            from: running,
            to,
            cases: passed,
        }
    }
}

/// A hash over the stack's directories, in order.
pub(super) fn fingerprint_all(dirs: &[PathBuf]) -> Result<String, RuleError> {
    let mut h = Sha256::new();
    for d in dirs {
        h.update(fingerprint(d)?.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// A hash of every file under the pack directory (names and contents).
fn fingerprint(dir: &Path) -> Result<String, RuleError> {
    let mut files = Vec::new();
    collect(dir, &mut files).map_err(|source| RuleError::Read {
        dir: dir.to_path_buf(),
        file: dir.to_path_buf(),
        source,
    })?;
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|source| RuleError::Read {
            dir: dir.to_path_buf(),
            file: f.clone(),
            source,
        })?;
        h.update(
            f.strip_prefix(dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
