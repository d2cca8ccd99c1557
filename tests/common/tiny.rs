//! A tiny random BERT written to a temporary directory (real MiniLM tokenizer, random weights),
//! and a plain f64 reference forward written independently of the engine's op set.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, View};

pub const VOCAB: usize = 30522;
pub const H: usize = 32;
pub const HEADS: usize = 4;
pub const FFN: usize = 64;
pub const LAYERS: usize = 2;
pub const MAX_POS: usize = 512;
pub const BOTTLENECK: usize = 4;

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// name → (shape, f32 values) of a random tiny BERT (HF names, no prefix) plus a seq_bn adapter
/// `a` and a head `a` in AdapterHub names.
pub fn random_weights(seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut r = Rng::new(seed);
    let mut t = vec![];
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32, r: &mut Rng| {
        let n = shape.iter().product();
        let v = r.vec(n, scale).into_iter().map(|x| x + offset).collect();
        t.push((name, shape, v));
    };
    add("embeddings.word_embeddings.weight".into(), vec![VOCAB, H], 0.5, 0.0, &mut r);
    add("embeddings.position_embeddings.weight".into(), vec![MAX_POS, H], 0.5, 0.0, &mut r);
    add("embeddings.token_type_embeddings.weight".into(), vec![2, H], 0.5, 0.0, &mut r);
    add("embeddings.LayerNorm.weight".into(), vec![H], 0.2, 1.0, &mut r);
    add("embeddings.LayerNorm.bias".into(), vec![H], 0.1, 0.0, &mut r);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        for m in ["query", "key", "value"] {
            add(format!("{p}attention.self.{m}.weight"), vec![H, H], 0.3, 0.0, &mut r);
            add(format!("{p}attention.self.{m}.bias"), vec![H], 0.1, 0.0, &mut r);
        }
        add(format!("{p}attention.output.dense.weight"), vec![H, H], 0.3, 0.0, &mut r);
        add(format!("{p}attention.output.dense.bias"), vec![H], 0.1, 0.0, &mut r);
        add(format!("{p}attention.output.LayerNorm.weight"), vec![H], 0.2, 1.0, &mut r);
        add(format!("{p}attention.output.LayerNorm.bias"), vec![H], 0.1, 0.0, &mut r);
        add(format!("{p}intermediate.dense.weight"), vec![FFN, H], 0.3, 0.0, &mut r);
        add(format!("{p}intermediate.dense.bias"), vec![FFN], 0.1, 0.0, &mut r);
        add(format!("{p}output.dense.weight"), vec![H, FFN], 0.3, 0.0, &mut r);
        add(format!("{p}output.dense.bias"), vec![H], 0.1, 0.0, &mut r);
        add(format!("{p}output.LayerNorm.weight"), vec![H], 0.2, 1.0, &mut r);
        add(format!("{p}output.LayerNorm.bias"), vec![H], 0.1, 0.0, &mut r);
        let a = format!("bert.encoder.layer.{l}.output.adapters.a.");
        add(format!("{a}adapter_down.0.weight"), vec![BOTTLENECK, H], 0.3, 0.0, &mut r);
        add(format!("{a}adapter_down.0.bias"), vec![BOTTLENECK], 0.1, 0.0, &mut r);
        add(format!("{a}adapter_up.weight"), vec![H, BOTTLENECK], 0.3, 0.0, &mut r);
        add(format!("{a}adapter_up.bias"), vec![H], 0.1, 0.0, &mut r);
    }
    add("heads.a.1.weight".into(), vec![H, H], 0.3, 0.0, &mut r);
    add("heads.a.1.bias".into(), vec![H], 0.1, 0.0, &mut r);
    add("heads.a.4.weight".into(), vec![3, H], 0.3, 0.0, &mut r);
    add("heads.a.4.bias".into(), vec![3], 0.1, 0.0, &mut r);
    t
}

pub fn config_json() -> String {
    format!(
        r#"{{"model_type":"bert","vocab_size":{VOCAB},"hidden_size":{H},"num_hidden_layers":{LAYERS},
"num_attention_heads":{HEADS},"intermediate_size":{FFN},"hidden_act":"gelu","max_position_embeddings":{MAX_POS},
"type_vocab_size":2,"layer_norm_eps":1e-12}}"#
    )
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}
impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Encodes f32 values in `dtype` (F32, F16 or BF16); returns the bytes and the values as stored.
pub fn encode(v: &[f32], dtype: Dtype) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        Dtype::F32 => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.to_vec()),
        Dtype::F16 => {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
        }
        Dtype::BF16 => {
            let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
            (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
        }
        _ => unreachable!(),
    }
}

/// Writes tensors to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), Raw { dtype, shape: s.clone(), bytes: encode(v, dtype).0 }))
        .collect();
    let views: Vec<(&str, &Raw)> = raws.iter().map(|(n, r)| (n.as_str(), r)).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A tiny model directory: config.json, model.safetensors (`prefix` before every encoder name),
/// tokenizer.json copied from the fetched MiniLM. Returns the weights as stored.
pub fn write_model(dir: &Path, seed: u64, dtype: Dtype, prefix: &str) -> HashMap<String, Vec<f32>> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json()).unwrap();
    std::fs::copy(super::minilm_dir().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let all = random_weights(seed);
    let encoder: Vec<_> = all
        .iter()
        .filter(|(n, _, _)| !n.starts_with("heads.") && !n.starts_with("bert."))
        .map(|(n, s, v)| (format!("{prefix}{n}"), s.clone(), v.clone()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &encoder, dtype);
    let adapter: Vec<_> =
        all.iter().filter(|(n, _, _)| n.starts_with("heads.") || n.starts_with("bert.")).cloned().collect();
    write_safetensors(&dir.join("adapter.safetensors"), &adapter, Dtype::F32);
    all.into_iter()
        .map(|(n, _, v)| {
            let stored =
                if n.starts_with("heads.") || n.starts_with("bert.") { v } else { encode(&v, dtype).1 };
            (n, stored)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// f64 reference: the textbook equations, loop by loop.

fn linear(x: &[f64], w: &[f32], b: &[f32], n_in: usize, n_out: usize) -> Vec<f64> {
    let rows = x.len() / n_in;
    let mut y = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            let mut s = b[o] as f64;
            for i in 0..n_in {
                s += x[r * n_in + i] * w[o * n_in + i] as f64;
            }
            y[r * n_out + o] = s;
        }
    }
    y
}

fn layernorm(x: &mut [f64], g: &[f32], b: &[f32]) {
    for row in x.chunks_mut(g.len()) {
        let n = row.len() as f64;
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - mean) / (var + 1e-12).sqrt() * g[j] as f64 + b[j] as f64;
        }
    }
}

fn erf(x: f64) -> f64 {
    // series for |x| < 3, continued fraction-free asymptote beyond (erf(±3) = ±0.99997791)
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut sum, mut term, mut n) = (0.0f64, x, 0.0f64);
    while term.abs() > 1e-18 * sum.abs().max(1e-300) && n < 200.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Last hidden state `[B*S, H]` (valid rows meaningful) and, with `adapter`, head logits.
pub fn reference_forward(
    w: &HashMap<String, Vec<f32>>,
    ids: &[u32],
    types: &[u32],
    lens: &[usize],
    seq: usize,
    adapter: bool,
) -> (Vec<f64>, Vec<f64>) {
    let g = |n: &str| w.get(n).unwrap_or_else(|| panic!("{n}")).as_slice();
    let batch = lens.len();
    let t = batch * seq;
    let mut x = vec![0.0; t * H];
    for i in 0..t {
        let (id, tt, s) = (ids[i] as usize, types[i] as usize, i % seq);
        for j in 0..H {
            x[i * H + j] = g("embeddings.word_embeddings.weight")[id * H + j] as f64
                + g("embeddings.position_embeddings.weight")[s * H + j] as f64
                + g("embeddings.token_type_embeddings.weight")[tt * H + j] as f64;
        }
    }
    layernorm(&mut x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"));
    let d = H / HEADS;
    for l in 0..LAYERS {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        let q = linear(&x, g(&p("attention.self.query.weight")), g(&p("attention.self.query.bias")), H, H);
        let k = linear(&x, g(&p("attention.self.key.weight")), g(&p("attention.self.key.bias")), H, H);
        let v = linear(&x, g(&p("attention.self.value.weight")), g(&p("attention.self.value.bias")), H, H);
        let mut ctx = vec![0.0; t * H];
        for b in 0..batch {
            for hd in 0..HEADS {
                for i in 0..seq {
                    let mut scores = vec![f64::NEG_INFINITY; seq];
                    for (j, s) in scores.iter_mut().enumerate().take(lens[b]) {
                        *s = (0..d)
                            .map(|c| q[(b * seq + i) * H + hd * d + c] * k[(b * seq + j) * H + hd * d + c])
                            .sum::<f64>()
                            / (d as f64).sqrt();
                    }
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        ctx[(b * seq + i) * H + hd * d + c] =
                            (0..seq).map(|j| e[j] / z * v[(b * seq + j) * H + hd * d + c]).sum::<f64>();
                    }
                }
            }
        }
        let mut a =
            linear(&ctx, g(&p("attention.output.dense.weight")), g(&p("attention.output.dense.bias")), H, H);
        a.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
        layernorm(
            &mut a,
            g(&p("attention.output.LayerNorm.weight")),
            g(&p("attention.output.LayerNorm.bias")),
        );
        let mut inter =
            linear(&a, g(&p("intermediate.dense.weight")), g(&p("intermediate.dense.bias")), H, FFN);
        inter.iter_mut().for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v / 2f64.sqrt())));
        let f = linear(&inter, g(&p("output.dense.weight")), g(&p("output.dense.bias")), FFN, H);
        let (lg, lb) = (g(&p("output.LayerNorm.weight")), g(&p("output.LayerNorm.bias")));
        let mut s: Vec<f64> = f.iter().zip(&a).map(|(f, a)| f + a).collect();
        if adapter {
            let ap = |n: &str| format!("bert.encoder.layer.{l}.output.adapters.a.{n}");
            let mut z = s.clone();
            layernorm(&mut z, lg, lb);
            let mut down =
                linear(&z, g(&ap("adapter_down.0.weight")), g(&ap("adapter_down.0.bias")), H, BOTTLENECK);
            down.iter_mut().for_each(|v| *v = v.max(0.0));
            let up = linear(&down, g(&ap("adapter_up.weight")), g(&ap("adapter_up.bias")), BOTTLENECK, H);
            s.iter_mut().zip(&up).for_each(|(s, u)| *s += u);
        }
        layernorm(&mut s, lg, lb);
        x = s;
    }
    let mut logits = vec![];
    if adapter {
        for b in 0..batch {
            let cls = &x[b * seq * H..(b * seq + 1) * H];
            let mut h = linear(cls, g("heads.a.1.weight"), g("heads.a.1.bias"), H, H);
            h.iter_mut().for_each(|v| *v = v.tanh());
            logits.extend(linear(&h, g("heads.a.4.weight"), g("heads.a.4.bias"), H, 3));
        }
    }
    (x, logits)
}
