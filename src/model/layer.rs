//! One transformer layer, with its bottleneck adapters: forward and backward side by side.
//!
//! The forward runs in two modes. Inference fuses what it can (activation and residual epilogues)
//! and keeps nothing. Training (`keep`) also returns a [`Saved`] record of the activations the
//! backward pass reads; dropout masks are never stored, they are regenerated from their keys.

use anyhow::{Context, Result};

use crate::adapter::mix::RowMix;
use crate::adapter::{AdapterKind, AdapterLayer, Bottleneck};
use crate::backend::{Activation, Backend, DropKey};

/// One transformer layer's weights (Q, K and V fused into one `[3H, H]` projection).
pub struct Layer<W> {
    pub qkv_w: W,
    pub qkv_b: W,
    pub attn_out_w: W,
    pub attn_out_b: W,
    pub attn_ln_g: W,
    pub attn_ln_b: W,
    pub ffn_in_w: W,
    pub ffn_in_b: W,
    pub ffn_out_w: W,
    pub ffn_out_b: W,
    pub out_ln_g: W,
    pub out_ln_b: W,
}

/// What a layer's forward needs besides its input.
pub struct LayerCtx<'a, W> {
    pub w: &'a Layer<W>,
    /// the adapter's placement, activation and this layer's modules
    pub adapter: Option<(AdapterKind, Activation, &'a AdapterLayer<W>)>,
    pub lens: &'a [usize],
    pub seq: usize,
    pub heads: usize,
    pub eps: f32,
    /// Only these rows of the output are wanted (the [CLS] rows when a classification head reads
    /// the last layer): everything after the attention runs on them alone.
    pub out_rows: Option<&'a [usize]>,
    /// Inference on packed rows: the layer's input and output hold only the valid tokens, and
    /// only the attention sees the padded layout.
    pub packed: Option<&'a Packing>,
    /// The adapter is `m` adapters stacked ([`crate::adapter::mix::stack_adapters`]), mixed per
    /// sample with these weights (inference only).
    pub mix: Option<&'a RowMix>,
}

/// The valid tokens of a padded batch, packed: row `k` of a packed matrix is padded row
/// `valid[k]`. Every op but attention is row-wise, so running them on the packed rows skips the
/// padding's work exactly.
#[derive(Clone, Debug)]
pub struct Packing {
    /// padded row of each packed row
    pub valid: Vec<usize>,
    /// packed row of each sequence's first token ([CLS])
    pub first: Vec<usize>,
    /// rows of the padded layout
    pub padded_rows: usize,
}

impl Packing {
    pub fn new(lens: &[usize], seq: usize) -> Packing {
        let mut valid = Vec::with_capacity(lens.iter().sum());
        let mut first = Vec::with_capacity(lens.len());
        for (b, &len) in lens.iter().enumerate() {
            first.push(valid.len());
            valid.extend(b * seq..b * seq + len);
        }
        Packing { valid, first, padded_rows: lens.len() * seq }
    }
}

/// The dropout sites of a layer (BERT's: attention probabilities, after the attention output
/// projection, after the FFN output projection). `None` = no dropout.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerDropout {
    pub attn_probs: Option<DropKey>,
    pub attn_out: Option<DropKey>,
    pub ffn_out: Option<DropKey>,
}

/// Activations of one bottleneck kept for its backward.
pub struct BottleneckSaved<A> {
    /// input
    z: A,
    /// down projection before the activation
    pre: A,
    /// after the activation (input of the up projection)
    hidden: A,
}

/// Activations of one layer kept for its backward.
pub struct Saved<A> {
    x: A,
    qkv: A,
    ctx: A,
    /// input of the attention LayerNorm
    attn_in: A,
    /// double_seq_bn: the adapter after the attention projection
    mh: Option<BottleneckSaved<A>>,
    /// output of the attention block
    attn: A,
    inter_pre: A,
    inter: A,
    /// seq_bn: `f + attn`, the input of the first application of the output LayerNorm
    mid: Option<A>,
    out_bn: Option<BottleneckSaved<A>>,
    /// input of the output LayerNorm
    out_in: A,
}

/// Where a layer's parameter gradients go (each `None` = frozen).
pub struct LayerGrads<'a, A> {
    pub base: Option<&'a mut Layer<A>>,
    pub adapter: Option<&'a mut AdapterLayer<A>>,
}

fn dropout<B: Backend>(be: &B, x: B::Act, key: Option<DropKey>) -> Result<B::Act> {
    match key {
        Some(k) => be.dropout(x, k),
        None => Ok(x),
    }
}

/// `drop(x·Wᵀ + b) + residual`, fused when there is no dropout.
fn linear_residual<B: Backend>(
    be: &B,
    x: &B::Act,
    w: &B::Weight,
    b: &B::Weight,
    key: Option<DropKey>,
    residual: &B::Act,
) -> Result<B::Act> {
    match key {
        None => be.linear(x, w, b, Activation::Identity, Some(residual)),
        Some(k) => {
            let y = be.linear(x, w, b, Activation::Identity, None)?;
            be.add(&be.dropout(y, k)?, residual)
        }
    }
}

/// `act(x·Wᵀ + b)`; with `keep` also the pre-activation.
fn linear_act<B: Backend>(
    be: &B,
    x: &B::Act,
    w: &B::Weight,
    b: &B::Weight,
    act: Activation,
    keep: bool,
) -> Result<(Option<B::Act>, B::Act)> {
    if keep {
        let pre = be.linear(x, w, b, Activation::Identity, None)?;
        let out = be.activation(&pre, act)?;
        Ok((Some(pre), out))
    } else {
        Ok((None, be.linear(x, w, b, act, None)?))
    }
}

/// The per-row β of a stacked adapter: `m` and `[rows, m]`.
pub type RowBeta<'a> = (usize, &'a [f32]);

/// `A(z) + residual`, `A(z) = up · act(down · z + down_b) + up_b`. With `mix`, `bn` holds `m`
/// stacked bottlenecks and `A` is their per-row weight-space mix: each projection is one GEMM
/// over the stack and a per-row blend ([`Backend::mix_rows`]), exactly `A` with
/// `Σᵢ βᵢ·θᵢ` as its weights.
pub fn bottleneck_forward<B: Backend>(
    be: &B,
    z: B::Act,
    bn: &Bottleneck<B::Weight>,
    act: Activation,
    residual: &B::Act,
    keep: bool,
    mix: Option<RowBeta>,
) -> Result<(B::Act, Option<BottleneckSaved<B::Act>>)> {
    if let Some((m, beta)) = mix {
        anyhow::ensure!(!keep, "a per-sample adapter mix runs in inference only");
        let down = be.linear(&z, &bn.down_w, &bn.down_b, Activation::Identity, None)?;
        let hidden = be.mix_rows(&down, m, beta, act, None)?;
        let up = be.linear(&hidden, &bn.up_w, &bn.up_b, Activation::Identity, None)?;
        return Ok((be.mix_rows(&up, m, beta, Activation::Identity, Some(residual))?, None));
    }
    let (pre, hidden) = linear_act(be, &z, &bn.down_w, &bn.down_b, act, keep)?;
    let y = be.linear(&hidden, &bn.up_w, &bn.up_b, Activation::Identity, Some(residual))?;
    Ok((y, pre.map(|pre| BottleneckSaved { z, pre, hidden })))
}

/// Backward of [`bottleneck_forward`] without its residual: returns `dz` when `need_dz`.
pub fn bottleneck_backward<B: Backend>(
    be: &B,
    s: &BottleneckSaved<B::Act>,
    bn: &Bottleneck<B::Weight>,
    act: Activation,
    dy: &B::Act,
    grads: Option<&mut Bottleneck<B::Act>>,
    need_dz: bool,
) -> Result<Option<B::Act>> {
    let (up, down) = match grads {
        Some(g) => (Some((&mut g.up_w, &mut g.up_b)), Some((&mut g.down_w, &mut g.down_b))),
        None => (None, None),
    };
    let dh = be.linear_backward(dy, &s.hidden, &bn.up_w, up, true)?.context("bottleneck dx")?;
    let dpre = be.activation_backward(dh, &s.pre, act)?;
    be.linear_backward(&dpre, &s.z, &bn.down_w, down, need_dz)
}

/// One layer forward. With `keep`, also returns what [`backward`] needs.
pub fn forward<B: Backend>(
    be: &B,
    c: &LayerCtx<B::Weight>,
    x: B::Act,
    d: &LayerDropout,
    keep: bool,
) -> Result<(B::Act, Option<Saved<B::Act>>)> {
    let (w, eps) = (c.w, c.eps);
    let qkv = be.linear(&x, &w.qkv_w, &w.qkv_b, Activation::Identity, None)?;
    let mut ctx = match c.packed {
        None => be.attention(&qkv, c.lens, c.seq, c.heads, d.attn_probs)?,
        Some(p) => {
            let padded = be.scatter_rows(&qkv, &p.valid, p.padded_rows)?;
            be.attention(&padded, c.lens, c.seq, c.heads, d.attn_probs)?
        }
    };
    // from here on every op is row-wise: keep only the wanted rows
    let x_rows = match (c.out_rows, c.packed) {
        (Some(rows), None) => {
            ctx = be.gather_rows(&ctx, rows)?;
            Some(be.gather_rows(&x, rows)?)
        }
        (Some(rows), Some(p)) => {
            // `rows` index the padded attention output; the packed input has each sequence's
            // first token at `p.first`
            ctx = be.gather_rows(&ctx, rows)?;
            Some(be.gather_rows(&x, &p.first)?)
        }
        (None, Some(p)) => {
            ctx = be.gather_rows(&ctx, &p.valid)?;
            None
        }
        (None, None) => None,
    };
    let xr = x_rows.as_ref().unwrap_or(&x);
    // a per-sample mix: the β of each row from here on (padded row index / seq = its sequence)
    let row_beta = c.mix.map(|mix| {
        let seq = c.seq;
        let beta = match (c.out_rows, c.packed) {
            (Some(rows), _) => mix.per_row(rows.iter().map(|r| r / seq)),
            (None, Some(p)) => mix.per_row(p.valid.iter().map(|r| r / seq)),
            (None, None) => mix.per_row((0..c.lens.len() * seq).map(|r| r / seq)),
        };
        (mix.m, beta)
    });
    let mix = row_beta.as_ref().map(|(m, b)| (*m, b.as_slice()));
    let (attn_in, mh) = match c.adapter {
        // Houlsby: LN_attn(o + A_mh(o) + x), o = the (dropped-out) attention output projection
        Some((AdapterKind::DoubleSeqBn, act, al)) => {
            let bn = al.attention.as_ref().context("double_seq_bn adapter lacks its attention half")?;
            let o = be.linear(&ctx, &w.attn_out_w, &w.attn_out_b, Activation::Identity, None)?;
            let o = dropout(be, o, d.attn_out)?;
            let s = be.add(&o, xr)?;
            bottleneck_forward(be, o, bn, act, &s, keep, mix)?
        }
        _ => (linear_residual(be, &ctx, &w.attn_out_w, &w.attn_out_b, d.attn_out, xr)?, None),
    };
    let attn = be.layernorm(&attn_in, &w.attn_ln_g, &w.attn_ln_b, eps)?;
    let (inter_pre, inter) = linear_act(be, &attn, &w.ffn_in_w, &w.ffn_in_b, Activation::Gelu, keep)?;
    let (out_in, mid, out_bn) = match c.adapter {
        None => (linear_residual(be, &inter, &w.ffn_out_w, &w.ffn_out_b, d.ffn_out, &attn)?, None, None),
        Some((kind, act, al)) => {
            let f = be.linear(&inter, &w.ffn_out_w, &w.ffn_out_b, Activation::Identity, None)?;
            let f = dropout(be, f, d.ffn_out)?;
            let s = be.add(&f, &attn)?;
            match kind {
                // Pfeiffer: y = LN(f + a + A(LN(f + a)))
                AdapterKind::SeqBn => {
                    let z = be.layernorm(&s, &w.out_ln_g, &w.out_ln_b, eps)?;
                    let (y, saved) = bottleneck_forward(be, z, &al.output, act, &s, keep, mix)?;
                    (y, Some(s), saved)
                }
                // Houlsby: y = LN(f + A_out(f) + a)
                AdapterKind::DoubleSeqBn => {
                    let (y, saved) = bottleneck_forward(be, f, &al.output, act, &s, keep, mix)?;
                    (y, None, saved)
                }
            }
        }
    };
    let out = be.layernorm(&out_in, &w.out_ln_g, &w.out_ln_b, eps)?;
    let saved = match inter_pre {
        Some(inter_pre) if keep => {
            Some(Saved { x, qkv, ctx, attn_in, mh, attn, inter_pre, inter, mid, out_bn, out_in })
        }
        _ => None,
    };
    Ok((out, saved))
}

/// One layer backward from `dy` (the gradient of its output): accumulates parameter gradients
/// into `g` and returns the gradient of its input when `need_dx`.
pub fn backward<B: Backend>(
    be: &B,
    c: &LayerCtx<B::Weight>,
    s: &Saved<B::Act>,
    dy: &B::Act,
    d: &LayerDropout,
    g: LayerGrads<B::Act>,
    need_dx: bool,
) -> Result<Option<B::Act>> {
    let (w, eps) = (c.w, c.eps);
    let LayerGrads { mut base, mut adapter } = g;
    let d_out_in = be.layernorm_backward(
        dy,
        &s.out_in,
        &w.out_ln_g,
        eps,
        base.as_deref_mut().map(|b| (&mut b.out_ln_g, &mut b.out_ln_b)),
    )?;
    let houlsby = matches!(c.adapter, Some((AdapterKind::DoubleSeqBn, ..)));
    // gradients of the (dropped-out) FFN output and of the attention block output
    let (df, mut dattn) = match c.adapter {
        None => (d_out_in.clone(), d_out_in),
        Some((kind, act, al)) => {
            let out_bn = s.out_bn.as_ref().context("no saved adapter activations")?;
            let grads = adapter.as_deref_mut().map(|a| &mut a.output);
            let dz = bottleneck_backward(be, out_bn, &al.output, act, &d_out_in, grads, true)?
                .context("adapter dz")?;
            match kind {
                AdapterKind::SeqBn => {
                    let mid = s.mid.as_ref().context("no saved LayerNorm input")?;
                    let ln = base.as_deref_mut().map(|b| (&mut b.out_ln_g, &mut b.out_ln_b));
                    let mut ds = be.layernorm_backward(&dz, mid, &w.out_ln_g, eps, ln)?;
                    be.add_assign(&mut ds, &d_out_in)?;
                    (ds.clone(), ds)
                }
                AdapterKind::DoubleSeqBn => {
                    let mut df = dz;
                    be.add_assign(&mut df, &d_out_in)?;
                    (df, d_out_in)
                }
            }
        }
    };
    if !(need_dx || base.is_some() || houlsby) {
        return Ok(None);
    }
    let df = dropout(be, df, d.ffn_out)?;
    let ffn_out = base.as_deref_mut().map(|b| (&mut b.ffn_out_w, &mut b.ffn_out_b));
    let dinter = be.linear_backward(&df, &s.inter, &w.ffn_out_w, ffn_out, true)?.context("dinter")?;
    let dinter = be.activation_backward(dinter, &s.inter_pre, Activation::Gelu)?;
    let ffn_in = base.as_deref_mut().map(|b| (&mut b.ffn_in_w, &mut b.ffn_in_b));
    let da = be.linear_backward(&dinter, &s.attn, &w.ffn_in_w, ffn_in, true)?.context("dattn")?;
    be.add_assign(&mut dattn, &da)?;
    let ln = base.as_deref_mut().map(|b| (&mut b.attn_ln_g, &mut b.attn_ln_b));
    let d_attn_in = be.layernorm_backward(&dattn, &s.attn_in, &w.attn_ln_g, eps, ln)?;
    // attn_in = drop(o) + x, or with Houlsby A_mh(drop(o)) + drop(o) + x
    let below = need_dx || base.is_some();
    let d_o = match c.adapter {
        Some((AdapterKind::DoubleSeqBn, act, al)) => {
            let bn = al.attention.as_ref().context("double_seq_bn adapter lacks its attention half")?;
            let mh = s.mh.as_ref().context("no saved adapter activations")?;
            let grads = adapter.as_deref_mut().and_then(|a| a.attention.as_mut());
            match bottleneck_backward(be, mh, bn, act, &d_attn_in, grads, below)? {
                Some(mut dz) => {
                    be.add_assign(&mut dz, &d_attn_in)?;
                    dz
                }
                None => return Ok(None),
            }
        }
        _ => d_attn_in.clone(),
    };
    if !below {
        return Ok(None);
    }
    let d_o = dropout(be, d_o, d.attn_out)?;
    let attn_out = base.as_deref_mut().map(|b| (&mut b.attn_out_w, &mut b.attn_out_b));
    let mut dctx = be.linear_backward(&d_o, &s.ctx, &w.attn_out_w, attn_out, true)?.context("dctx")?;
    let total = c.lens.len() * c.seq;
    let d_attn_in = match c.out_rows {
        Some(rows) => {
            dctx = be.scatter_rows(&dctx, rows, total)?;
            be.scatter_rows(&d_attn_in, rows, total)?
        }
        None => d_attn_in,
    };
    let dqkv = be.attention_backward(&dctx, &s.qkv, c.lens, c.seq, c.heads, d.attn_probs)?;
    let qkv = base.as_deref_mut().map(|b| (&mut b.qkv_w, &mut b.qkv_b));
    let dx = be.linear_backward(&dqkv, &s.x, &w.qkv_w, qkv, need_dx)?;
    Ok(match dx {
        Some(mut dx) => {
            be.add_assign(&mut dx, &d_attn_in)?;
            Some(dx)
        }
        None => None,
    })
}
