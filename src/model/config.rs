//! `config.json` of a BERT-family encoder (Hugging Face format): BERT and RoBERTa, which share
//! the architecture and differ in how the embedding layer numbers positions, in the checkpoint's
//! prefix and in the tokenizer's special tokens ([`Family`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::backend::{EmbedSpec, Positions};

/// The encoder families admix runs: one architecture, described by what differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BERT (`model_type: "bert"`): position `s` for token `s`, token types, `bert.` checkpoints.
    Bert,
    /// RoBERTa (`model_type: "roberta"`): positions counted from `padding_idx + 1` over the
    /// non-pad tokens (pads at `padding_idx`), one token type, `roberta.` checkpoints.
    Roberta { padding_idx: u32 },
}

impl Family {
    /// The prefix of the encoder's tensors in task models and AdapterHub checkpoints.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta { .. } => "roberta.",
        }
    }

    /// `model_type` as Hugging Face writes it.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta { .. } => "roberta",
        }
    }

    /// AdapterHub's model class for this family (`adapter_config.json`'s `model_class`).
    pub fn adapter_model_class(self) -> &'static str {
        match self {
            Family::Bert => "BertAdapterModel",
            Family::Roberta { .. } => "RobertaAdapterModel",
        }
    }

    pub fn positions(self) -> Positions {
        match self {
            Family::Bert => Positions::Absolute,
            Family::Roberta { padding_idx } => Positions::AfterPadding { padding_idx },
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// the padding token's id (RoBERTa numbers positions from it)
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_dropout() -> f64 {
    0.1
}

fn default_position_type() -> String {
    "absolute".into()
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// bert-base-uncased's shape: 12 layers, hidden 768, 12 heads, FFN 3072 (benchmarks).
    pub fn bert_base() -> Self {
        BertConfig {
            model_type: default_model_type(),
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: default_act(),
            max_position_embeddings: 512,
            type_vocab_size: default_type_vocab(),
            layer_norm_eps: default_eps(),
            position_embedding_type: default_position_type(),
            hidden_dropout_prob: default_dropout(),
            attention_probs_dropout_prob: default_dropout(),
            pad_token_id: Some(0),
        }
    }

    /// roberta-base's shape: bert-base's, with 50,265 byte-level BPE tokens, 514 positions
    /// (`padding_idx` 1), one token type and LayerNorm eps 1e-5 (benchmarks).
    pub fn roberta_base() -> Self {
        BertConfig {
            model_type: "roberta".into(),
            vocab_size: 50265,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            ..Self::bert_base()
        }
    }

    /// The family `model_type` names (validated by [`BertConfig::validate`]).
    pub fn family(&self) -> Family {
        match self.model_type.as_str() {
            "roberta" => Family::Roberta { padding_idx: self.pad_token_id.unwrap_or(1) },
            _ => Family::Bert,
        }
    }

    /// What the embedding layer computes besides its tables.
    pub fn embed_spec(&self) -> EmbedSpec {
        EmbedSpec { positions: self.family().positions(), eps: self.layer_norm_eps as f32 }
    }

    /// The longest sequence the position table holds, special tokens included (RoBERTa's first
    /// `padding_idx + 1` rows are not positions of tokens).
    pub fn max_tokens(&self) -> usize {
        match self.family() {
            Family::Bert => self.max_position_embeddings,
            Family::Roberta { padding_idx } => {
                self.max_position_embeddings.saturating_sub(padding_idx as usize + 1)
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let cfg: BertConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a BERT or RoBERTa config.json", path.display()))?;
        cfg.validate().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.model_type.as_str(), "bert" | "roberta") {
            bail!(
                "model_type `{}` is not supported: admix runs BERT-family encoders (model_type \"bert\" or \"roberta\")",
                self.model_type
            );
        }
        if let Family::Roberta { padding_idx } = self.family() {
            if padding_idx as usize >= self.vocab_size {
                bail!("pad_token_id {padding_idx} is outside the vocabulary ({})", self.vocab_size);
            }
            if self.max_tokens() == 0 {
                bail!(
                    "max_position_embeddings {} leaves no position after padding_idx {padding_idx}",
                    self.max_position_embeddings
                );
            }
        }
        if self.position_embedding_type != "absolute" {
            bail!(
                "position_embedding_type `{}` is not supported (only \"absolute\")",
                self.position_embedding_type
            );
        }
        if self.hidden_act != "gelu" {
            bail!("hidden_act `{}` is not supported (only exact erf \"gelu\")", self.hidden_act);
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            bail!("layer_norm_eps {} must be a positive number", self.layer_norm_eps);
        }
        for (what, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{what} {p} must be in [0, 1)");
            }
        }
        for (what, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                bail!("{what} must be positive");
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
