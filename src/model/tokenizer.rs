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
    template: Option<Template>,
    spaces_are_pieces: bool,
}

/// The special tokens the tokenizer's post-processor puts around texts: BERT's `[CLS] a [SEP]` and
/// `[CLS] a [SEP] b [SEP]`, RoBERTa's `<s> a </s>` and `<s> a </s></s> b </s>`. Read off the
/// tokenizer itself (see [`TextTokenizer::template`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// before the first text
    pub first: Vec<u32>,
    /// between the two texts of a pair
    pub between: Vec<u32>,
    /// after the (last) text
    pub last: Vec<u32>,
    /// the second text of a pair is token type 1 (BERT; RoBERTa has one token type)
    pub typed_pairs: bool,
}

impl Template {
    /// `first pieces last` (pieces truncated as the tokenizer truncates a single text to
    /// `max_len`).
    pub fn single(&self, mut pieces: Vec<u32>, max_len: usize) -> Vec<u32> {
        pieces.truncate(max_len.saturating_sub(self.first.len() + self.last.len()));
        [&self.first[..], &pieces, &self.last].concat()
    }

    /// `first a between b last`.
    pub fn pair(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        [&self.first[..], a, &self.between, b, &self.last].concat()
    }

    /// How many special tokens a pair has.
    pub fn pair_specials(&self) -> usize {
        self.first.len() + self.between.len() + self.last.len()
    }
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
        // BERT's `[PAD]`, RoBERTa's `<pad>`
        let pad_id = ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0);
        let mut tok = TextTokenizer { inner, max_len, pad_id, template: None, spaces_are_pieces: false };
        tok.template = tok.read_template();
        tok.spaces_are_pieces = tok.pieces(" ").is_ok_and(|p| !p.is_empty());
        Ok(tok)
    }

    /// Whether a space is part of the piece after it (byte-level BPE's `Ġword`, RoBERTa) rather
    /// than dropped between pieces (WordPiece, BERT): then a word tokenizes alike in a text only
    /// together with the separator before it.
    pub fn spaces_are_pieces(&self) -> bool {
        self.spaces_are_pieces
    }

    /// The special tokens around texts, read off two probes (`a`, and the pair `a`, `b`): what the
    /// tokenizer adds around the probes' own pieces. `None` when the encodings do not have that
    /// shape (then callers tokenize whole texts).
    fn read_template(&self) -> Option<Template> {
        let a = self.pieces("a").ok()?;
        let b = self.pieces("b").ok()?;
        let single = self.encode_rows(&[TextInput::single("a")]).ok()?.remove(0).0;
        let (pair, types, _) = self.encode_rows(&[TextInput::pair("a", "b")]).ok()?.remove(0);
        let at = single.windows(a.len()).position(|w| w == a.as_slice())?;
        let (first, last) = (&single[..at], &single[at + a.len()..]);
        let rest = pair.strip_prefix(first)?.strip_prefix(&a[..])?.strip_suffix(last)?;
        let between = rest.strip_suffix(&b[..])?.to_vec();
        Some(Template {
            first: first.to_vec(),
            between,
            last: last.to_vec(),
            typed_pairs: types.contains(&1),
        })
    }

    /// The token that ends a pair's first segment when the second text is token type 1
    /// (BERT's first `[SEP]`); `None` when pairs are one segment (RoBERTa) or the template is
    /// unknown.
    pub fn segment_end(&self) -> Option<u32> {
        self.template.as_ref().filter(|t| t.typed_pairs).and_then(|t| t.between.first().copied())
    }

    /// The special tokens the tokenizer puts around texts, if they have the usual shape.
    pub fn template(&self) -> Option<&Template> {
        self.template.as_ref()
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

    /// The word vocabulary entry `id` spells where it stands after a space: the entry itself for
    /// WordPiece; for byte-level BPE the entry without its leading `Ġ` (the byte-level form of a
    /// space), and `None` for entries without one (they continue a word or start a text).
    pub fn spelled_word(&self, id: u32) -> Option<String> {
        let t = self.id_to_token(id)?;
        if self.spaces_are_pieces {
            t.strip_prefix('\u{120}').map(str::to_string)
        } else {
            Some(t)
        }
    }

    /// What kind of wordpiece each id is (the learned router's text statistics).
    pub fn piece_table(&self) -> crate::adapter::router::features::PieceTable {
        let n = self.vocab_size() as u32;
        crate::adapter::router::features::PieceTable::new(
            (0..n).map(|id| self.id_to_token(id)),
            self.spaces_are_pieces,
        )
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
