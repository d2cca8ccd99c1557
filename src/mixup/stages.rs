//! The pipeline's stages, each cached in the output directory: `stages.json` records the plan, what
//! finished and how long it took; a re-run skips what finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::Plan;
use crate::io;

/// Which stages finished, and their wall times.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct StageLog {
    pub plan: Option<Plan>,
    pub seconds: BTreeMap<String, f64>,
}

pub(super) struct Stages {
    path: PathBuf,
    pub log: StageLog,
}

impl Stages {
    pub fn open(out: &Path, plan: &Plan) -> Result<Stages> {
        let path = out.join("stages.json");
        let log: StageLog = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?,
            Err(_) => StageLog::default(),
        };
        if let Some(p) = &log.plan {
            if p != plan {
                bail!(
                    "{} holds a run with other settings ({}); use another --out or delete it",
                    out.display(),
                    serde_json::to_string(p)?
                );
            }
        }
        let mut s = Stages { path, log };
        s.log.plan = Some(plan.clone());
        s.save()?;
        Ok(s)
    }

    fn save(&self) -> Result<()> {
        io::write_atomic(&self.path, serde_json::to_string_pretty(&self.log)?.as_bytes())
    }

    /// Runs `f` unless stage `name` finished before; returns the stage's wall time.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        if let Some(&s) = self.log.seconds.get(name) {
            eprintln!("[mixup] {name}: done ({s:.0} s), skipped");
            return Ok(s);
        }
        self.start(name, f)
    }

    /// [`Stages::run`] for a stage that runs a training or attack job. The job writes its config as
    /// JSON beside its output (`record`): the stage's record and its cache key, so a finished stage
    /// whose recorded config differs from `config` (the one asked for now) is refused, not reused.
    pub fn run_job<T: Serialize>(
        &mut self,
        name: &str,
        record: &Path,
        config: &T,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<f64> {
        if self.log.seconds.contains_key(name) {
            if let Ok(text) = std::fs::read_to_string(record) {
                let was: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: invalid JSON", record.display()))?;
                // through text, as the job wrote it (f32 fields read back as their shortest decimal)
                let now: serde_json::Value = serde_json::from_str(&serde_json::to_string(config)?)?;
                if was != now {
                    bail!(
                        "stage {name} finished with other settings ({}); use another --out or delete it",
                        record.display()
                    );
                }
            }
        }
        self.run(name, f)
    }

    /// [`Stages::run_job`] for a stage that is not a job: `config` is written to `record` once `f`
    /// finished, the stage's record and cache key as a job's own.
    pub fn run_recorded<T: Serialize>(
        &mut self,
        name: &str,
        record: &Path,
        config: &T,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<f64> {
        self.run_job(name, record, config, || {
            f()?;
            io::write_atomic(record, serde_json::to_string_pretty(config)?.as_bytes())
        })
    }

    fn start(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        eprintln!("[mixup] {name} ...");
        let t = Instant::now();
        f().with_context(|| format!("stage {name}"))?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("[mixup] {name}: {s:.0} s");
        self.log.seconds.insert(name.to_string(), s);
        self.save()?;
        Ok(s)
    }
}
