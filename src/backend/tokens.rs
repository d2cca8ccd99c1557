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

    /// The rows `rows` (in that order) as a batch of their own, padded to the longest of them.
    pub fn select(&self, rows: &[usize]) -> Self {
        let seq = rows.iter().map(|&r| self.lens[r]).max().unwrap_or(0);
        let (mut ids, mut type_ids) =
            (Vec::with_capacity(rows.len() * seq), Vec::with_capacity(rows.len() * seq));
        for &r in rows {
            ids.extend_from_slice(&self.ids[r * self.seq..r * self.seq + seq]);
            type_ids.extend_from_slice(&self.type_ids[r * self.seq..r * self.seq + seq]);
        }
        TokenBatch {
            batch: rows.len(),
            seq,
            ids,
            type_ids,
            lens: rows.iter().map(|&r| self.lens[r]).collect(),
            truncated: rows.iter().map(|&r| self.truncated[r]).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_the_batch_made_of_those_rows() {
        let rows = vec![(vec![1, 2, 3], vec![0, 0, 1]), (vec![4], vec![0]), (vec![5, 6], vec![0, 1])];
        let all = TokenBatch::from_rows(&rows, 9);
        let pick = [2, 1];
        let want = TokenBatch::from_rows(&[rows[2].clone(), rows[1].clone()], 9);
        assert_eq!(all.select(&pick), want);
        assert_eq!(all.select(&[0, 1, 2]), all);
        assert_eq!(all.select(&[]).batch, 0);
    }
}
