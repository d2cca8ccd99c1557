//! Small file helpers.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// JSON lines: one compact JSON value per row, each ended by a newline.
pub fn jsonl<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> Result<String> {
    let mut text = String::new();
    for r in rows {
        text += &serde_json::to_string(&r)?;
        text.push('\n');
    }
    Ok(text)
}

/// [`jsonl`] written atomically to `path`.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    write_atomic(path, jsonl(rows)?.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written file and a crash leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `write`; any failure (a full disk, say) names
/// `path` and leaves no temporary file behind.
fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        write(&mut f)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes f32 tensors as a safetensors file, atomically (see [`write_atomic`]).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))?;
            Ok((name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Replaces directory `dir` by one that `fill` writes, without ever leaving `dir` half-written:
/// `fill` writes `dir.tmp`; then the old `dir` moves to `dir.old`, the new one into place, and the
/// old one is removed. [`recover_dir`] undoes a crash between the two renames.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        // nothing half-written stays behind (a full disk, a failed download of a tensor)
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    recover_dir(dir)?;
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("cannot move {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// After a crash inside [`replace_dir`]: if `dir` is missing but `dir.old` exists, puts it back.
pub fn recover_dir(dir: &Path) -> Result<()> {
    let old = sibling(dir, "old");
    if !dir.exists() && old.exists() {
        std::fs::rename(&old, dir).with_context(|| format!("cannot restore {}", dir.display()))?;
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_or_interrupted_replace_keeps_the_old_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("last");
        replace_dir(&dir, |d| write_atomic(&d.join("w"), b"v1")).unwrap();
        // a writer that fails half-way: the old checkpoint stays, whole
        let err = replace_dir(&dir, |d| {
            write_atomic(&d.join("w"), b"v2-partial")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(dir.join("w")).unwrap(), b"v1");
        assert!(!root.path().join("last.tmp").exists(), "the failed attempt is cleaned up at once");
        // a crash between the two renames: `last` gone, `last.old` present → recovered
        std::fs::rename(&dir, root.path().join("last.old")).unwrap();
        recover_dir(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("w")).unwrap(), b"v1");
        // the next replace cleans the leftover temp directory and succeeds
        replace_dir(&dir, |d| write_atomic(&d.join("w"), b"v3")).unwrap();
        assert_eq!(std::fs::read(dir.join("w")).unwrap(), b"v3");
        assert!(!root.path().join("last.tmp").exists() && !root.path().join("last.old").exists());
    }

    #[test]
    fn a_full_disk_names_the_file_and_leaves_no_temporary() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("model.safetensors");
        let enospc = || Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let e = format!("{:#}", write_atomic_with(&path, |_| enospc()).unwrap_err());
        assert!(e.contains(&format!("cannot write {}", path.display())), "{e}");
        assert!(e.contains("No space left on device"), "{e}");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "no temporary file left");
    }
}
