//! Tokenization with the engine's own padding and truncation policy.
//!
//! `tokenizer.json` files often carry a fixed padding/truncation setting (MiniLM's pads everything to
//! 128). We switch both off and apply ours: truncate each input (or pair, longest first) to
//! `max_len` tokens including special tokens, then pad the batch to its longest member.

use std::path::Path;

use crate::backend::TokenBatch;
use anyhow::{anyhow, bail, Context, Result};
use tokenizers::{EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One input: a text, or a sentence pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextInput {
    pub text: String,
    pub pair: Option<String>,
}

impl TextInput {
    /// The length in bytes of each input (both texts of a pair): the key inputs are sorted by so
    /// that batches of similar lengths pad less.
    pub fn lengths(inputs: &[TextInput]) -> Vec<usize> {
        inputs.iter().map(|t| t.text.len() + t.pair.as_ref().map_or(0, String::len)).collect()
    }

    pub fn single(text: impl Into<String>) -> Self {
        TextInput { text: text.into(), pair: None }
    }
    pub fn pair(a: impl Into<String>, b: impl Into<String>) -> Self {
        TextInput { text: a.into(), pair: Some(b.into()) }
    }
}

pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
}

impl TextTokenizer {
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        if !path.exists() {
            bail!("tokenizer not found: {} does not exist", path.display());
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer ({e})", path.display()))?;
        Self::new(inner, max_len)
    }

    pub fn new(mut inner: Tokenizer, max_len: usize) -> Result<Self> {
        if max_len < 3 {
            bail!("max length must be at least 3 tokens (got {max_len})");
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow!("cannot set truncation: {e}"))?;
        let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
        Ok(TextTokenizer { inner, max_len, pad_id })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// What kind of wordpiece each id is (the learned router's text statistics).
    pub fn piece_table(&self) -> crate::adapter::router::features::PieceTable {
        let n = self.vocab_size() as u32;
        crate::adapter::router::features::PieceTable::new((0..n).map(|id| self.id_to_token(id)))
    }

    /// The id of a token of the vocabulary (e.g. `[CLS]`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The wordpieces of a fragment of text, without special tokens (an attack tokenizes the words
    /// of a text one by one and reuses the pieces of the words it did not change).
    pub fn pieces(&self, fragment: &str) -> Result<Vec<u32>> {
        let e = self.inner.encode(fragment, false).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let mut ids = e.get_ids().to_vec();
        for o in e.get_overflowing() {
            ids.extend_from_slice(o.get_ids());
        }
        Ok(ids)
    }

    /// Tokenizes without padding: `(ids, type_ids, truncated)` per input.
    pub fn encode_rows(&self, inputs: &[TextInput]) -> Result<Vec<(Vec<u32>, Vec<u32>, bool)>> {
        let encode_inputs: Vec<EncodeInput> = inputs
            .iter()
            .map(|i| match &i.pair {
                None => EncodeInput::Single(i.text.as_str().into()),
                Some(p) => EncodeInput::Dual(i.text.as_str().into(), p.as_str().into()),
            })
            .collect();
        let encodings =
            self.inner.encode_batch(encode_inputs, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(encodings
            .iter()
            .map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec(), !e.get_overflowing().is_empty()))
            .collect())
    }

    /// Tokenizes and pads a batch.
    pub fn encode(&self, inputs: &[TextInput]) -> Result<TokenBatch> {
        let encoded = self.encode_rows(inputs)?;
        let truncated = encoded.iter().map(|r| r.2).collect();
        let rows: Vec<(Vec<u32>, Vec<u32>)> =
            encoded.into_iter().map(|(ids, types, _)| (ids, types)).collect();
        let mut batch = TokenBatch::from_rows(&rows, self.pad_id);
        batch.truncated = truncated;
        Ok(batch)
    }
}

/// The tokenizer file of a model directory.
pub fn tokenizer_path(model_dir: &Path) -> std::path::PathBuf {
    model_dir.join("tokenizer.json")
}

/// Convenience: `TextTokenizer::from_file` with context naming the model.
pub fn load_tokenizer(model_dir: &Path, max_len: usize) -> Result<TextTokenizer> {
    TextTokenizer::from_file(&tokenizer_path(model_dir), max_len)
        .with_context(|| format!("model {}", model_dir.display()))
}
