//! Durable file writes, for every module that writes: a file is written to a temporary sibling,
//! fsynced and renamed over its target ([`write_atomic`]); a directory is assembled under a
//! temporary sibling name and renamed into place whole ([`replace_dir`]). A crash at any moment
//! leaves either the old file (directory) or the new one, never half of either.
//!
//! [`write_atomic`]'s temporary files are named `.NAME.tmp-PID`, which is how
//! [`RunDir`](crate::train::RunDir) recognises the ones a killed run left.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An [`Error::Io`] for `path`.
pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `std::fs::create_dir_all`, naming `dir` in the error.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))
}

/// Write `bytes` to `path` atomically: a temporary sibling (`.NAME.tmp-PID`), fsynced, then
/// renamed over `path`, and the directory fsynced so that the rename is durable too.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| io_err(path, e))
}

/// Write `bytes` to `path` (a new file in a directory that is not yet visible, see
/// [`replace_dir`]) and flush it to disk; no rename.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Flush the file at `path` (written by another library) to disk.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(path, e))
}

/// Flush a directory's entries (a rename into it) to disk; best effort, since not every platform
/// can open a directory.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Make the directory `out` hold exactly what `fill` writes into an empty directory: `fill`
/// writes into a temporary sibling (`.NAME.tmp-PID-NANOS`), which is then renamed to `out`.
/// An existing `out` (the caller has decided it may be replaced) is renamed aside first and
/// deleted after the swap; if the swap fails it is put back. On error nothing temporary is left.
pub(crate) fn replace_dir(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Format {
            path: out.to_path_buf(),
            detail: "the output path has no directory name: give e.g. ./merged".into(),
        })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_dir_all(&parent)?;
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let tmp = parent.join(format!(".{name}.tmp-{unique}"));
    std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);

    let result = if out.exists() {
        let old = parent.join(format!(".{name}.old-{unique}"));
        std::fs::rename(out, &old)
            .map_err(|e| io_err(out, e))
            .and_then(|()| match std::fs::rename(&tmp, out) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&old);
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::rename(&old, out);
                    Err(io_err(out, e))
                }
            })
    } else {
        std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    sync_dir(&parent);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lora-wgpu-fsio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let dir = scratch("atomic");
        let f = dir.join("a.json");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
        // Into a missing directory: an error naming the file, nothing created.
        let e = write_atomic(&dir.join("no/b.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("no/b.json"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replace_dir_swaps_whole_and_cleans_up_on_error() {
        let dir = scratch("replace");
        let out = dir.join("merged");
        replace_dir(&out, |t| write_synced(&t.join("x"), b"1")).unwrap();
        replace_dir(&out, |t| write_synced(&t.join("y"), b"2")).unwrap();
        assert!(!out.join("x").exists());
        assert_eq!(std::fs::read(out.join("y")).unwrap(), b"2");
        let e = replace_dir(&out, |_| Err(Error::invalid("x", 1, "fails")));
        assert!(e.is_err());
        assert_eq!(std::fs::read(out.join("y")).unwrap(), b"2");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["merged"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
