//! Durable file-system steps of the bundle format and of everything else written to disk:
//! fsync of files and folders, atomic replace, free space, tree removal.
//!
//! [`atomic_write`] replaces a file in place: the new content goes to a temporary file in the
//! same folder, is fsynced, renamed over the target, and the folder is fsynced, so a crash leaves
//! either the old or the new content, never a torn file or a rename lost with the page cache.
//! [`commit_file`] is the same last three steps for a file another writer (an image encoder, a
//! streaming serializer) has already written beside its target.

use std::fs::File;
use std::io::Write;
use std::path::Path;

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

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
    }
    commit_file(&tmp, path)
}

/// Puts the finished file `tmp` (in the same folder) in place of `path`: fsync of `tmp`, rename,
/// fsync of the folder.
pub fn commit_file(tmp: &Path, path: &Path) -> std::io::Result<()> {
    sync_path(tmp)?;
    std::fs::rename(tmp, path)?;
    sync_path(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
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
    fn remove_tree_of_a_missing_folder_is_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        remove_tree(&d.path().join("never-made")).unwrap();
    }
}
