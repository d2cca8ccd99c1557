//! The encoder: config, weights (mmap), tokenizer and the BERT-family orchestration (BERT and
//! RoBERTa, [`config::Family`]).

pub mod bert;
pub mod classify;
pub mod config;
pub mod layer;
pub mod mixture;
pub mod params;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use self::config::BertConfig;
use self::tokenizer::TextTokenizer;
use crate::weights::WeightFile;

/// A Hugging Face model directory: `config.json`, `model.safetensors`, `tokenizer.json`.
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: BertConfig,
    pub weights: WeightFile,
    pub tokenizer: TextTokenizer,
}

impl ModelDir {
    /// [`ModelDir::open`] with `max_len`, or when it is `None` with `default` capped at the
    /// model's positions (a small model's limit is its own).
    pub fn open_or_default(dir: &Path, max_len: Option<usize>, default: usize) -> Result<Self> {
        match max_len {
            Some(n) => Self::open(dir, n),
            None => {
                let positions =
                    BertConfig::from_file(&dir.join("config.json")).map_or(default, |c| c.max_tokens());
                Self::open(dir, default.min(positions.max(1)))
            }
        }
    }

    pub fn open(dir: &Path, max_len: usize) -> Result<Self> {
        if dir.is_file() {
            bail!(
                "--model {} is a file; give the model's directory (config.json, model.safetensors, tokenizer.json)",
                dir.display()
            );
        }
        if !dir.is_dir() {
            bail!(
                "model directory {} does not exist (run `admix fetch` for the default model)",
                dir.display()
            );
        }
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        if max_len > config.max_tokens() {
            bail!("max length {max_len} exceeds the model's {} positions", config.max_tokens());
        }
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            bail!("{} does not exist (admix reads safetensors weights)", weights_path.display());
        }
        let weights = WeightFile::open(&weights_path)?;
        bert::check_config(&weights, &config)?;
        let tokenizer = tokenizer::load_tokenizer(dir, max_len)?;
        if tokenizer.vocab_size() > config.vocab_size {
            bail!(
                "{}: tokenizer has {} tokens but the model's vocabulary is {}",
                dir.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            );
        }
        if let config::Family::Roberta { padding_idx } = config.family() {
            // RoBERTa tells pads from tokens by their id when it numbers positions
            if tokenizer.pad_id() != padding_idx {
                bail!(
                    "{}: the tokenizer pads with id {} but config.json's pad_token_id is {padding_idx}",
                    dir.display(),
                    tokenizer.pad_id()
                );
            }
        }
        Ok(ModelDir { dir: dir.to_path_buf(), config, weights, tokenizer })
    }

    /// The encoder weights as validated host tensors.
    pub fn bert(&self) -> Result<bert::Bert<crate::weights::Tensor>> {
        bert::load_host(&self.weights, &self.config).context("loading encoder weights")
    }
}
