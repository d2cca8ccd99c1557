//! The encoder's input as every backend takes it: padded token ids.

/// A padded batch of token ids, row-major `[batch, seq]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// number of valid (non-pad) tokens of each row; valid tokens come first
    pub lens: Vec<usize>,
    /// rows that were cut to `max_len`
    pub truncated: Vec<bool>,
}

impl TokenBatch {
    /// Builds a batch from unpadded rows, padding with `pad_id` to the longest row.
    pub fn from_rows(rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32) -> Self {
        let batch = rows.len();
        let seq = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; batch * seq];
        let mut type_ids = vec![0; batch * seq];
        let mut lens = Vec::with_capacity(batch);
        for (b, (r_ids, r_types)) in rows.iter().enumerate() {
            ids[b * seq..b * seq + r_ids.len()].copy_from_slice(r_ids);
            type_ids[b * seq..b * seq + r_types.len()].copy_from_slice(r_types);
            lens.push(r_ids.len());
        }
        TokenBatch { batch, seq, ids, type_ids, lens, truncated: vec![false; batch] }
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}
