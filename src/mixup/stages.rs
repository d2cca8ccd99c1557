//! The pipeline's stages, each cached in the output directory: `stages.json` records the plan,
//! `stages/<name>.json` each finished stage and its wall time; a re-run skips what finished. One
//! file per stage lets several processes (a scheduler's workers, `admix mixup --stage`) share one
//! run directory: each writes only its own stage's files, atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::Plan;
use crate::io;

/// The run's plan (`stages.json`); runs made before `stages/` existed kept their stages' seconds
/// here too.
#[derive(Default, Serialize, Deserialize)]
struct StageLog {
    plan: Option<Plan>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seconds: BTreeMap<String, f64>,
}

/// A finished stage's record (`stages/<name>.json`).
#[derive(Serialize, Deserialize)]
struct Finished {
    seconds: f64,
}

pub(super) struct Stages {
    dir: PathBuf,
}

impl Stages {
    pub fn open(out: &Path, plan: &Plan) -> Result<Stages> {
        let path = out.join("stages.json");
        let log: StageLog = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?,
            Err(_) => StageLog::default(),
        };
        // more training seeds, or another adaptive protocol, extend a run: its finished stages stay
        // what they were (an adaptive stage's own record holds its number of examples)
        let same = |p: &Plan| {
            Plan {
                seeds: plan.seeds,
                adaptive: plan.adaptive,
                adaptive_methods: plan.adaptive_methods,
                ..p.clone()
            } == *plan
        };
        if let Some(p) = &log.plan {
            if !same(p) {
                bail!(
                    "{} holds a run with other settings ({}); use another --out or delete it",
                    out.display(),
                    serde_json::to_string(p)?
                );
            }
        }
        let s = Stages { dir: out.join("stages") };
        std::fs::create_dir_all(&s.dir).with_context(|| format!("cannot create {}", s.dir.display()))?;
        for (name, &seconds) in &log.seconds {
            s.finish(name, seconds)?;
        }
        let log = StageLog { plan: Some(plan.clone()), seconds: BTreeMap::new() };
        io::write_atomic(&path, serde_json::to_string_pretty(&log)?.as_bytes())?;
        Ok(s)
    }

    /// The stages of the run in `out`, read only (nothing is written).
    pub fn at(out: &Path) -> Stages {
        Stages { dir: out.join("stages") }
    }

    fn record(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn finish(&self, name: &str, seconds: f64) -> Result<()> {
        io::write_atomic(&self.record(name), serde_json::to_string(&Finished { seconds })?.as_bytes())
    }

    /// The wall time of stage `name`, if it finished.
    pub fn finished(&self, name: &str) -> Result<Option<f64>> {
        let path = self.record(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let f: Finished =
                    serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?;
                Ok(Some(f.seconds))
            }
            Err(_) => Ok(None),
        }
    }

    /// Every finished stage and its wall time.
    pub fn seconds(&self) -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        for entry in
            std::fs::read_dir(&self.dir).with_context(|| format!("cannot read {}", self.dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stage) = name.strip_suffix(".json").filter(|s| !s.starts_with('.')) {
                if let Some(s) = self.finished(stage)? {
                    out.insert(stage.to_string(), s);
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` unless stage `name` finished before; returns the stage's wall time.
    pub fn run(&self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        if let Some(s) = self.finished(name)? {
            eprintln!("[mixup] {name}: done ({s:.0} s), skipped");
            return Ok(s);
        }
        self.start(name, f)
    }

    /// [`Stages::run`] for a stage that runs a training or attack job. The job writes its config as
    /// JSON beside its output (`record`): the stage's record and its cache key, so a finished stage
    /// whose recorded config differs from `config` (the one asked for now) is refused, not reused.
    pub fn run_job<T: Serialize>(
        &self,
        name: &str,
        record: &Path,
        config: &T,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<f64> {
        if self.finished(name)?.is_some() {
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
        &self,
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

    fn start(&self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        eprintln!("[mixup] {name} ...");
        let t = Instant::now();
        f().with_context(|| format!("stage {name}"))?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("[mixup] {name}: {s:.0} s");
        self.finish(name, s)?;
        Ok(s)
    }
}
