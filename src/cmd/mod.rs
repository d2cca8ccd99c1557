//! The command files: each parses its flags, builds the library's typed config, calls the library
//! and prints. The flags several commands share are declared here, once.

pub mod attack;
pub mod bench;
pub mod eval;
pub mod misc;
pub mod mixup;
pub mod score;
pub mod serve;
pub mod train;

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use admix::adapter::mix::BetaRule;
use admix::backend::{Activation, Device, Precision};
use admix::classifier::{ClassifierSpec, Source};
use admix::data::input::{self, Format, Record};
use admix::Choice;

/// A clap parser for a library [`Choice`]: its names are the possible values (and the help's list).
pub fn choice<T: Choice + Clone + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| v.name()))
        .map(|s| T::parse(&s).expect("a possible value"))
}

/// Where the model comes from and where and on how many threads it runs (every command that runs
/// a model).
#[derive(Args)]
pub struct Runtime {
    /// Base model directory (config.json, model.safetensors, tokenizer.json); default: the fetched
    /// MiniLM
    #[arg(long, env = "ADMIX_MODEL")]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu (f32 reference), cuda (the kernels on GPU 0), emu (the same kernels
    /// on the CPU's SIMT emulator: slow, for checking without a GPU)
    #[arg(long, value_parser = choice::<Device>(), default_value = "cpu", env = "ADMIX_DEVICE")]
    pub device: Device,
    /// The GEMMs' arithmetic: f32 (the CPU's default, the reference) or bf16 (bf16 inputs, f32
    /// accumulation: the CUDA kernels' numerics, and on the CPU twice the f32 rate where it has
    /// AVX512-BF16). Default: the device's own
    #[arg(long, value_parser = choice::<Precision>(), env = "ADMIX_PRECISION")]
    pub precision: Option<Precision>,
    /// Worker threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Runtime {
    /// Sizes the worker pool (call before any work).
    pub fn init(&self) -> Result<()> {
        admix::init_threads(self.threads)
    }

    pub fn model_dir(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(admix::assets::default_model_dir)
    }
}

/// The token limit.
#[derive(Args)]
pub struct MaxLen {
    /// Truncate inputs (pairs: longest first) to this many tokens, special tokens included
    /// (default: the checkpoint's trained length, else 128; `train`: 64)
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=8192))]
    pub max_len: Option<u64>,
}

impl MaxLen {
    pub fn get(&self) -> Option<usize> {
        self.max_len.map(|n| n as usize)
    }
}

/// A labelled split to run on (`eval`, `attack`).
#[derive(Args)]
pub struct LabelledData {
    /// `mr`, or a labelled .tsv/.csv/.jsonl file
    #[arg(long, default_value = "mr")]
    pub data: String,
    /// MR split: train, dev or test
    #[arg(long, default_value = "test")]
    pub split: String,
}

/// The seed of everything random in a run.
#[derive(Args)]
pub struct Seed {
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// How a classifier is named (score, eval, attack, serve): one `--adapter` is that classifier; two
/// or more are the AdpMixup mixture, with entropy β (`--tau`, calibrated with `--temperatures`),
/// static weights (`--beta`) or the learned router (`--router`).
#[derive(Args)]
pub struct ClassifierArgs {
    /// A checkpoint directory (`admix train`'s run or best/, or AdapterHub's
    /// `save_adapter(..., with_head=True)`), or a safetensors file in AdapterHub naming with
    /// `#NAME` picking one of its adapters. Repeat to mix: two or more make the AdpMixup mixture
    #[arg(long = "adapter", value_name = "DIR|FILE[#NAME]")]
    pub adapters: Vec<String>,
    /// AdpMixup's entropy temperature: β = softmax(−H/τ) per input over the adapters' prediction
    /// entropies (two or more adapters, without --beta)
    #[arg(long, default_value_t = 0.1)]
    pub tau: f32,
    /// Static mixing weights instead, one per --adapter in order, summing to 1: the weight-space mix
    /// θ = Σ βᵢ θᵢ
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["router", "temperatures"])]
    pub beta: Option<Vec<f32>>,
    /// Calibrated entropy β: each adapter's predictions temperature-scaled, softmax(ln p / Tᵢ), before
    /// the entropies (one Tᵢ per --adapter, in order; `admix mixup` fits them on dev)
    #[arg(long, value_delimiter = ',', conflicts_with = "router")]
    pub temperatures: Option<Vec<f32>>,
    /// The learned router in DIR (router_config.json + router.safetensors, as `admix mixup` saves it
    /// in its run directory's router/) chooses β per input: admix's own rule, not the paper's
    #[arg(long, value_name = "DIR")]
    pub router: Option<PathBuf>,
    /// Adapter name in a safetensors file (one --adapter; same as FILE#NAME)
    #[arg(long)]
    pub adapter_name: Option<String>,
    /// Head name in a safetensors file (default: the adapter's name, else the only one)
    #[arg(long)]
    pub head_name: Option<String>,
    /// Adapter non-linearity of safetensors files (AdapterHub seq_bn default: relu; double_seq_bn:
    /// swish)
    #[arg(long)]
    pub adapter_act: Option<String>,
}

impl ClassifierArgs {
    /// The classifier these flags name; `positional` is `eval`'s checkpoint argument.
    pub fn spec(&self, positional: Option<&Path>) -> Result<ClassifierSpec> {
        let mut sources: Vec<Source> = self.adapters.iter().map(|s| Source::parse(s)).collect();
        if let Some(p) = positional {
            if !sources.is_empty() {
                bail!("give the checkpoint either as the argument or with --adapter, not both");
            }
            sources.push(Source::dir(p));
        }
        if sources.is_empty() {
            bail!("no classifier given: --adapter DIR|FILE[#NAME] (repeat to mix)");
        }
        if self.adapter_name.is_some() || self.head_name.is_some() {
            let [source] = sources.as_mut_slice() else {
                bail!("--adapter-name/--head-name name one adapter: with several, use FILE#NAME");
            };
            if let Some(n) = &self.adapter_name {
                if source.adapter.as_ref().is_some_and(|a| a != n) {
                    bail!(
                        "--adapter-name {n} and {}#{} disagree",
                        source.path.display(),
                        source.adapter.as_ref().unwrap()
                    );
                }
                source.adapter = Some(n.clone());
            }
            source.head = self.head_name.clone();
        }
        let adapter_act = match &self.adapter_act {
            Some(s) => Some(Activation::parse(s).with_context(|| format!("unknown activation `{s}`"))?),
            None => None,
        };
        let mixing = match &self.beta {
            Some(beta) => {
                if sources.len() < 2 {
                    bail!("--beta mixes two or more adapters (got one --adapter)");
                }
                BetaRule::Fixed(beta.clone())
            }
            None => match (&self.router, &self.temperatures) {
                (Some(dir), _) => BetaRule::Router { dir: dir.clone() },
                (None, Some(t)) => BetaRule::Calibrated { tau: self.tau, temperatures: t.clone() },
                (None, None) => BetaRule::Entropy { tau: self.tau },
            },
        };
        let spec = ClassifierSpec { sources, mixing, adapter_act };
        spec.check()?;
        Ok(spec)
    }
}

/// Reads the input texts (`-` is stdin); an input without texts is an error.
pub fn read_inputs(input: &str, format: Option<&str>) -> Result<Vec<Record>> {
    let path = (input != "-").then(|| Path::new(input));
    let format = Format::resolve(format, path)?;
    let got = match path {
        None => input::read(std::io::stdin().lock(), format, "stdin")?,
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("cannot open input {}", p.display()))?;
            input::read(BufReader::new(f), format, input)?
        }
    };
    if got.records.is_empty() {
        let source = if input == "-" { "stdin" } else { input };
        bail!("no input texts in {source}");
    }
    if got.empty_lines > 0 {
        eprintln!("note: skipped {} empty line(s); outputs carry their input line numbers", got.empty_lines);
    }
    Ok(got.records)
}

/// Writes JSON lines to `path` atomically (temp file + rename), or to stdout.
pub fn write_jsonl(path: Option<&Path>, rows: impl Iterator<Item = serde_json::Value>) -> Result<()> {
    match path {
        None => {
            let mut out = std::io::stdout().lock();
            for r in rows {
                writeln!(out, "{r}")?;
            }
            Ok(())
        }
        Some(p) => admix::io::write_jsonl(p, rows),
    }
}

/// Label names for `n` labels: `--labels` (checked against `n`), else the classifier's own.
pub fn label_names(flag: Option<&str>, own: &[String]) -> Result<Vec<String>> {
    let Some(l) = flag else { return Ok(own.to_vec()) };
    let v: Vec<String> = l.split(',').map(|s| s.trim().to_string()).collect();
    if v.len() != own.len() {
        bail!("--labels names {} labels but the head has {}", v.len(), own.len());
    }
    Ok(v)
}
