//! Durable file-system steps of the bundle format and of everything else written to disk:
//! fsync of files and folders, atomic replace, free space, tree removal.
//!
//! [`atomic_write`] and [`atomic_write_with`] are the one way a file is replaced in place: the
//! new content goes to a temporary file in the same folder, is fsynced, renamed over the target,
//! and the folder is fsynced, so a crash leaves either the old or the new content, never a torn
//! file or a rename lost with the page cache.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// fsync of a file or folder.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// fsync of every regular file under `dir` and of every folder (bottom-up).
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let ty = ent.file_type()?;
        if ty.is_dir() {
            sync_tree(&ent.path())?;
        } else if ty.is_file() {
            sync_path(&ent.path())?;
        }
    }
    sync_path(dir)
}

/// The temporary file [`atomic_write_with`] writes before renaming it over `path`: a hidden
/// sibling (`.<name>.tmp`), so it lies on the same file system and the rename is atomic.
pub fn temporary_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dir.join(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_with(
        path,
        |tmp| -> std::io::Result<()> {
            // Flushed to the disk by the fsync of `atomic_write_with`.
            File::create(tmp)?.write_all(bytes)
        },
        |_, e| e,
    )
}

/// Replaces `path` atomically with the file `write` creates at the temporary path it is given
/// (for writers that only take a path, such as libtorch's safetensors writer). The temporary
/// file is fsynced, renamed over `path`, and the folder fsynced. `io_error` turns a failure of
/// these steps, with the path it concerns, into the caller's error type; a failed step removes
/// the temporary file.
pub fn atomic_write_with<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    io_error: impl Fn(&Path, std::io::Error) -> E,
) -> Result<(), E> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temporary_path(path);
    let staged = write(&tmp)
        .and_then(|()| sync_path(&tmp).map_err(|e| io_error(&tmp, e)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io_error(path, e)));
    if staged.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    staged?;
    sync_path(dir).map_err(|e| io_error(dir, e))
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Removes a folder tree if it exists.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_content_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        atomic_write(&p, b"old").unwrap();
        atomic_write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_writer_keeps_the_old_content_and_removes_its_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        atomic_write(&p, b"old").unwrap();
        let r = atomic_write_with(
            &p,
            |tmp| {
                std::fs::write(tmp, b"half").unwrap();
                Err("writer failed")
            },
            |_, _| "io",
        );
        assert_eq!(r, Err("writer failed"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!temporary_path(&p).exists());
    }

    #[test]
    fn a_missing_folder_is_reported_with_the_path_that_failed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("absent/config.json");
        let e = atomic_write_with(
            &p,
            |tmp| std::fs::write(tmp, b"x").map_err(|e| (tmp.to_path_buf(), e.kind())),
            |path, e| (path.to_path_buf(), e.kind()),
        )
        .unwrap_err();
        assert_eq!(e, (temporary_path(&p), std::io::ErrorKind::NotFound));
    }

    #[test]
    fn remove_tree_of_a_missing_folder_is_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        remove_tree(&d.path().join("never-made")).unwrap();
    }
}
