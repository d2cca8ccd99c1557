//! The op set on the CUDA backend: shapes checked, buffers allocated, launches configured, written
//! once for both executors. Activations (and their gradients) are bf16 `[rows, cols]`; parameter
//! gradients and optimizer moments f32; weights bf16 with their shape.

use std::sync::Arc;

use anyhow::{bail, ensure, Result};

use super::executor::{DevBuf, Executor};
use super::launch;
use super::tensor::{DType, DevMat, DevTensor};
use super::Cuda;
use crate::backend::bf16;
use crate::backend::cpu::Cpu;
use crate::backend::{shapes, TokenBatch};
use crate::backend::{Activation, Backend, DropKey, EmbedSpec, EmbeddingWeights, PgdStep, TopkFlips, Work};
use crate::weights::Tensor;

/// Activations (and their gradients) must be bf16: an f32 matrix (a parameter gradient) here is a
/// caller's mix-up, reported rather than misread.
fn bf16_inputs(op: &str, xs: &[Option<&DevMat>]) -> Result<()> {
    for x in xs.iter().flatten() {
        x.expect(DType::Bf16, op)?;
    }
    Ok(())
}

/// An embedding perturbation must be an f32 `[rows, h]` matrix (the state precision: bf16 would
/// round small PGD steps away).
fn check_delta(op: &str, delta: Option<&DevMat>, rows: usize, h: usize) -> Result<()> {
    let Some(d) = delta else { return Ok(()) };
    d.expect(DType::F32, op)?;
    ensure!(
        d.rows == rows && d.cols == h,
        "{op}: the perturbation is {}x{}, expected {rows}x{h}",
        d.rows,
        d.cols
    );
    Ok(())
}

impl Cuda {
    fn mat(&self, rows: usize, cols: usize) -> Result<DevMat> {
        self.mat_of(rows, cols, DType::Bf16)
    }

    fn mat_of(&self, rows: usize, cols: usize, dtype: DType) -> Result<DevMat> {
        let buf = DevBuf::new(&self.exec, rows * cols * dtype.size())?;
        if self.poison {
            buf.fill(0xff)?;
        }
        Ok(DevMat { rows, cols, dtype, buf: Arc::new(buf) })
    }

    fn ints(&self, v: impl IntoIterator<Item = usize>) -> Result<DevBuf> {
        let v: Vec<i32> = v.into_iter().map(|x| x as i32).collect();
        DevBuf::from_slice(&self.exec, &v)
    }

    fn exec(&self) -> &dyn Executor {
        &*self.exec
    }
}

impl Backend for Cuda {
    type Act = DevMat;
    type Weight = DevTensor;

    fn name(&self) -> &'static str {
        self.label
    }

    fn synchronize(&self) -> Result<()> {
        self.exec.synchronize()
    }

    fn time_runs(&self, warmup: usize, reps: usize, before: Work, f: Work) -> Result<Vec<f64>> {
        self.exec.time_runs(warmup, reps, before, f)
    }

    fn weight(&self, t: &Tensor) -> Result<DevTensor> {
        Ok(DevTensor {
            shape: t.shape().to_vec(),
            buf: DevBuf::from_slice(&self.exec, &bf16::from_slice(t.data()))?,
            host: t.clone(),
            master: None,
        })
    }

    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<DevMat> {
        shapes::upload(data.len(), rows, cols)?;
        Ok(DevMat {
            rows,
            cols,
            dtype: DType::Bf16,
            buf: Arc::new(DevBuf::from_slice(&self.exec, &bf16::from_slice(data))?),
        })
    }

    fn upload_state(&self, rows: usize, cols: usize, data: &[f32]) -> Result<DevMat> {
        ensure!(data.len() == rows * cols, "upload_state: {} values for {rows}x{cols}", data.len());
        Ok(DevMat { rows, cols, dtype: DType::F32, buf: Arc::new(DevBuf::from_slice(&self.exec, data)?) })
    }

    fn download(&self, x: &DevMat) -> Result<(usize, usize, Vec<f32>)> {
        let data = match x.dtype {
            DType::Bf16 => bf16::to_vec(&x.buf.to_vec::<u16>()?[..x.numel()]),
            DType::F32 => x.buf.to_vec::<f32>()?[..x.numel()].to_vec(),
        };
        Ok((x.rows, x.cols, data))
    }

    fn embed(
        &self,
        batch: &TokenBatch,
        w: &EmbeddingWeights<DevTensor>,
        spec: EmbedSpec,
        delta: Option<&DevMat>,
    ) -> Result<DevMat> {
        let (vocab, h) = (w.word.shape[0], w.word.shape[1]);
        let (positions, types) = (w.position.shape[0], w.token_type.shape[0]);
        ensure!(
            spec.positions.rows_needed(batch.seq) <= positions,
            "embed: sequence length {} needs {} of the {positions} position rows",
            batch.seq,
            spec.positions.rows_needed(batch.seq)
        );
        if let Some(id) = batch.ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("embed: token id {id} outside the vocabulary of {vocab}");
        }
        if let Some(t) = batch.type_ids.iter().find(|&&t| t as usize >= types) {
            bail!("embed: token type {t} outside the {types} types");
        }
        let rows = batch.batch * batch.seq;
        check_delta("embed", delta, rows, h)?;
        let ids = self.ints(batch.ids.iter().map(|&i| i as usize))?;
        let tys = self.ints(batch.type_ids.iter().map(|&i| i as usize))?;
        let out = self.mat(rows, h)?;
        launch::embed(self.exec(), &out.buf, &ids, &tys, w, delta.map(|d| d.buf()), rows, batch.seq, spec)?;
        Ok(out)
    }

    fn linear(
        &self,
        x: &DevMat,
        w: &DevTensor,
        b: &DevTensor,
        act: Activation,
        residual: Option<&DevMat>,
    ) -> Result<DevMat> {
        bf16_inputs("linear", &[Some(x), residual])?;
        let (n, k) =
            shapes::linear((x.rows, x.cols), &w.shape, b.numel(), residual.map(|r| (r.rows, r.cols)))?;
        let out = self.mat(x.rows, n)?;
        let res = residual.map(|r| &*r.buf);
        launch::linear(self.exec(), &out.buf, &x.buf, &w.buf, Some(&b.buf), res, (x.rows, n, k), act)?;
        Ok(out)
    }

    fn add(&self, a: &DevMat, b: &DevMat) -> Result<DevMat> {
        bf16_inputs("add", &[Some(a), Some(b)])?;
        ensure!(a.rows == b.rows && a.cols == b.cols, "add: {}x{} + {}x{}", a.rows, a.cols, b.rows, b.cols);
        let out = self.mat(a.rows, a.cols)?;
        launch::add(self.exec(), &out.buf, &a.buf, &b.buf, a.rows * a.cols)?;
        Ok(out)
    }

    fn layernorm(&self, x: &DevMat, gamma: &DevTensor, beta: &DevTensor, eps: f32) -> Result<DevMat> {
        bf16_inputs("layernorm", &[Some(x)])?;
        ensure!(
            gamma.numel() == x.cols && beta.numel() == x.cols,
            "layernorm: parameters for {} columns",
            gamma.numel()
        );
        let out = self.mat(x.rows, x.cols)?;
        launch::layernorm(self.exec(), &out.buf, &x.buf, &gamma.buf, &beta.buf, x.rows, x.cols, eps)?;
        Ok(out)
    }

    fn attention(
        &self,
        qkv: &DevMat,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<DevMat> {
        bf16_inputs("attention", &[Some(qkv)])?;
        let batch = lens.len();
        let (h, d) = shapes::attention((qkv.rows, qkv.cols), lens, seq, heads)?;
        ensure!(d <= 128, "attention: head dimension {d} > 128 is not supported by the kernels");
        let out = self.mat(qkv.rows, h)?;
        let lens_dev = self.ints(lens.iter().copied())?;
        launch::attention(self.exec(), &out.buf, &qkv.buf, &lens_dev, batch, seq, heads, d, dropout)?;
        Ok(out)
    }

    fn gather_rows(&self, x: &DevMat, rows: &[usize]) -> Result<DevMat> {
        bf16_inputs("gather_rows", &[Some(x)])?;
        shapes::rows_in("gather_rows", rows, x.rows)?;
        let out = self.mat(rows.len(), x.cols)?;
        if !rows.is_empty() {
            let idx = self.ints(rows.iter().copied())?;
            launch::gather_rows(self.exec(), &out.buf, &x.buf, &idx, rows.len(), x.cols)?;
        }
        Ok(out)
    }

    fn mix_rows(
        &self,
        y: &DevMat,
        m: usize,
        beta: &[f32],
        act: Activation,
        residual: Option<&DevMat>,
    ) -> Result<DevMat> {
        bf16_inputs("mix_rows", &[Some(y), residual])?;
        let n = crate::backend::cpu::mix::check_mix(
            y.rows,
            y.cols,
            m,
            beta.len(),
            residual.map(|r| (r.rows, r.cols)),
        )?;
        let out = self.mat(y.rows, n)?;
        if y.rows > 0 {
            let beta = DevBuf::from_slice(&self.exec, beta)?;
            launch::adapter_mix(
                self.exec(),
                &out.buf,
                &y.buf,
                &beta,
                residual.map(|r| &*r.buf),
                (y.rows, n, m),
                act,
            )?;
        }
        Ok(out)
    }

    fn mean_pool_l2(&self, x: &DevMat, lens: &[usize], seq: usize) -> Result<DevMat> {
        bf16_inputs("mean_pool_l2", &[Some(x)])?;
        shapes::sequences("mean_pool", x.rows, lens, seq)?;
        let out = self.mat(lens.len(), x.cols)?;
        let lens_dev = self.ints(lens.iter().copied())?;
        launch::mean_pool_l2(self.exec(), &out.buf, &x.buf, &lens_dev, lens.len(), seq, x.cols)?;
        Ok(out)
    }

    fn dropout(&self, mut x: DevMat, drop: DropKey) -> Result<DevMat> {
        x.expect(DType::Bf16, "dropout")?;
        let n = x.numel();
        launch::dropout(self.exec(), x.buf_mut()?, n, drop)?;
        Ok(x)
    }

    fn activation(&self, x: &DevMat, act: Activation) -> Result<DevMat> {
        bf16_inputs("activation", &[Some(x)])?;
        let out = self.mat(x.rows, x.cols)?;
        launch::activation(self.exec(), &out.buf, &x.buf, x.rows * x.cols, act)?;
        Ok(out)
    }

    fn activation_backward(&self, mut dy: DevMat, pre: &DevMat, act: Activation) -> Result<DevMat> {
        ensure!(
            dy.rows == pre.rows && dy.cols == pre.cols,
            "activation_backward: dy and pre differ in shape"
        );
        dy.expect(DType::Bf16, "activation_backward")?;
        let n = dy.numel();
        launch::activation_backward(self.exec(), dy.buf_mut()?, &pre.buf, n, act)?;
        Ok(dy)
    }

    fn linear_backward(
        &self,
        dy: &DevMat,
        x: &DevMat,
        w: &DevTensor,
        grads: Option<(&mut DevMat, &mut DevMat)>,
        need_dx: bool,
    ) -> Result<Option<DevMat>> {
        bf16_inputs("linear_backward", &[Some(dy), Some(x)])?;
        let (n, k) = (w.shape[0], w.shape[1]);
        let m = dy.rows;
        ensure!(
            dy.cols == n && x.rows == m && x.cols == k,
            "linear_backward: dy {m}x{}, x {}x{}, w {n}x{k}",
            dy.cols,
            x.rows,
            x.cols
        );
        if let Some((dw, db)) = grads {
            ensure!(
                dw.numel() == n * k && db.numel() == n,
                "linear_backward: gradient buffers of the wrong size"
            );
            dw.expect(DType::F32, "linear_backward dW")?;
            db.expect(DType::F32, "linear_backward db")?;
            launch::linear_dw(self.exec(), dw.buf_mut()?, &dy.buf, &x.buf, (m, n, k))?;
            launch::col_sum_acc(self.exec(), db.buf_mut()?, &dy.buf, m, n)?;
        }
        if !need_dx {
            return Ok(None);
        }
        let dx = self.mat(m, k)?;
        launch::linear_dx(self.exec(), &dx.buf, &dy.buf, &w.buf, (m, n, k))?;
        Ok(Some(dx))
    }

    fn layernorm_backward(
        &self,
        dy: &DevMat,
        x: &DevMat,
        gamma: &DevTensor,
        eps: f32,
        grads: Option<(&mut DevMat, &mut DevMat)>,
    ) -> Result<DevMat> {
        bf16_inputs("layernorm_backward", &[Some(dy), Some(x)])?;
        let (rows, cols) = (x.rows, x.cols);
        ensure!(
            dy.rows == rows && dy.cols == cols && gamma.numel() == cols,
            "layernorm_backward: shapes differ"
        );
        let dx = self.mat(rows, cols)?;
        let stats = DevBuf::new(&self.exec, rows * 2 * 4)?;
        let param = match grads {
            Some((dg, db)) => {
                ensure!(
                    dg.numel() == cols && db.numel() == cols,
                    "layernorm_backward: parameter gradients of the wrong size"
                );
                dg.expect(DType::F32, "layernorm_backward dγ")?;
                db.expect(DType::F32, "layernorm_backward dβ")?;
                Some((dg.buf_mut()?, db.buf_mut()?))
            }
            None => None,
        };
        launch::layernorm_backward(
            self.exec(),
            &dx.buf,
            &stats,
            &dy.buf,
            &x.buf,
            &gamma.buf,
            (rows, cols),
            eps,
            param,
        )?;
        Ok(dx)
    }

    fn embed_backward(
        &self,
        dy: &DevMat,
        batch: &TokenBatch,
        w: &EmbeddingWeights<DevTensor>,
        spec: EmbedSpec,
        delta: Option<&DevMat>,
        grads: Option<&mut EmbeddingWeights<DevMat>>,
    ) -> Result<DevMat> {
        bf16_inputs("embed_backward", &[Some(dy)])?;
        let rows = batch.batch * batch.seq;
        let h = w.word.shape[1];
        check_delta("embed_backward", delta, rows, h)?;
        ensure!(
            dy.rows == rows && dy.cols == h,
            "embed_backward: dy is {}x{}, expected {rows}x{h}",
            dy.rows,
            dy.cols
        );
        let ids = self.ints(batch.ids.iter().map(|&i| i as usize))?;
        let tys = self.ints(batch.type_ids.iter().map(|&i| i as usize))?;
        let dsum = self.mat(rows, h)?;
        let stats = DevBuf::new(&self.exec, rows * 2 * 4)?;
        let bufs = match grads {
            Some(g) => {
                for m in [&g.word, &g.position, &g.token_type, &g.ln_gamma, &g.ln_beta] {
                    m.expect(DType::F32, "embed_backward gradients")?;
                }
                Some(EmbeddingWeights {
                    word: g.word.buf_mut()?,
                    position: g.position.buf_mut()?,
                    token_type: g.token_type.buf_mut()?,
                    ln_gamma: g.ln_gamma.buf_mut()?,
                    ln_beta: g.ln_beta.buf_mut()?,
                })
            }
            None => None,
        };
        let shape = (rows, batch.seq);
        launch::embed_backward(
            self.exec(),
            &dsum.buf,
            &stats,
            &dy.buf,
            &ids,
            &tys,
            w,
            delta.map(|d| d.buf()),
            shape,
            spec,
            bufs.as_ref(),
        )?;
        Ok(dsum)
    }

    fn attention_backward(
        &self,
        dctx: &DevMat,
        qkv: &DevMat,
        lens: &[usize],
        seq: usize,
        heads: usize,
        dropout: Option<DropKey>,
    ) -> Result<DevMat> {
        bf16_inputs("attention_backward", &[Some(dctx), Some(qkv)])?;
        let batch = lens.len();
        ensure!(
            qkv.rows == batch * seq && qkv.cols % 3 == 0,
            "attention_backward: qkv is {}x{}",
            qkv.rows,
            qkv.cols
        );
        let h = qkv.cols / 3;
        ensure!(h % heads == 0 && h / heads <= 128, "attention_backward: {h} columns for {heads} heads");
        ensure!(
            dctx.rows == qkv.rows && dctx.cols == h,
            "attention_backward: dctx is {}x{}",
            dctx.rows,
            dctx.cols
        );
        ensure!(
            lens.iter().all(|&l| l > 0 && l <= seq),
            "attention_backward: sequence lengths must be in 1..={seq}"
        );
        let d = h / heads;
        let dqkv = self.mat(qkv.rows, qkv.cols)?;
        let stats = DevBuf::new(&self.exec, batch * heads * seq * 3 * 4)?;
        let lens_dev = self.ints(lens.iter().copied())?;
        let shape = (batch, seq, heads, d);
        launch::attention_backward(
            self.exec(),
            &dqkv.buf,
            &stats,
            &dctx.buf,
            &qkv.buf,
            &lens_dev,
            shape,
            dropout,
        )?;
        Ok(dqkv)
    }
    fn scatter_rows(&self, dy: &DevMat, rows: &[usize], total: usize) -> Result<DevMat> {
        bf16_inputs("scatter_rows", &[Some(dy)])?;
        shapes::scatter(dy.rows, rows, total)?;
        let out = self.mat(total, dy.cols)?;
        out.buf.fill(0)?;
        if !rows.is_empty() {
            let idx = self.ints(rows.iter().copied())?;
            launch::scatter_rows(self.exec(), &out.buf, &dy.buf, &idx, rows.len(), dy.cols)?;
        }
        Ok(out)
    }

    fn cross_entropy(&self, logits: &DevMat, labels: &[u32]) -> Result<(f32, DevMat)> {
        // [batch, labels] is a few hundred numbers: the loss and its gradient are computed on the
        // host by the CPU reference, and the gradient goes back
        let (rows, cols, data) = self.download(logits)?;
        let host = Cpu.upload(rows, cols, &data)?;
        let (loss, grad) = Cpu.cross_entropy(&host, labels)?;
        Ok((loss, self.upload(rows, cols, &grad.data)?))
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<DevMat> {
        let m = self.mat_of(rows, cols, DType::F32)?;
        m.buf.fill(0)?;
        Ok(m)
    }

    fn zeros_like(&self, w: &DevTensor) -> Result<DevMat> {
        let rows = if w.shape.len() == 1 { 1 } else { w.shape[0] };
        self.zeros(rows, w.numel() / rows.max(1))
    }

    fn fill_zero(&self, x: &mut DevMat) -> Result<()> {
        if Arc::strong_count(&x.buf) > 1 {
            x.buf = Arc::new(DevBuf::new(&self.exec, x.numel() * x.dtype.size())?);
        }
        x.buf.fill(0)
    }

    fn add_assign(&self, acc: &mut DevMat, x: &DevMat) -> Result<()> {
        ensure!(
            acc.rows == x.rows && acc.cols == x.cols && acc.dtype == x.dtype,
            "add_assign: {}x{} {:?} += {}x{} {:?}",
            acc.rows,
            acc.cols,
            acc.dtype,
            x.rows,
            x.cols,
            x.dtype
        );
        let (n, dtype) = (acc.numel(), acc.dtype);
        launch::add_assign(self.exec(), acc.buf_mut()?, &x.buf, n, dtype)
    }

    fn sum_squares(&self, x: &DevMat) -> Result<f64> {
        launch::sum_squares(&self.exec, &x.buf, x.numel(), x.dtype)
    }

    fn adamw(
        &self,
        param: &mut DevTensor,
        grad: &DevMat,
        m: &mut DevMat,
        v: &mut DevMat,
        h: &crate::backend::AdamWStep,
    ) -> Result<()> {
        let n = param.numel();
        shapes::adamw(n, grad.numel(), m.numel(), v.numel())?;
        for (x, what) in [(grad, "gradient"), (&*m, "first moment"), (&*v, "second moment")] {
            x.expect(DType::F32, &format!("adamw {what}"))?;
        }
        if param.master.is_none() {
            param.master = Some(DevBuf::from_slice(&self.exec, param.host.data())?);
        }
        let master = param.master.as_ref().expect("created above");
        launch::adamw(self.exec(), master, &param.buf, &grad.buf, m.buf_mut()?, v.buf_mut()?, n, h)
    }
    fn weight_to_host(&self, w: &DevTensor) -> Result<Tensor> {
        match &w.master {
            // trained: the f32 master weights
            Some(master) => {
                Ok(Tensor::from_vec(w.shape.clone(), master.to_vec::<f32>()?[..w.numel()].to_vec()))
            }
            // never updated: the tensor it was made from
            None => Ok(w.host.clone()),
        }
    }

    fn pgd_step(
        &self,
        delta: &mut DevMat,
        grad: &DevMat,
        lens: &[usize],
        seq: usize,
        step: &PgdStep,
    ) -> Result<()> {
        delta.expect(DType::F32, "pgd_step perturbation")?;
        grad.expect(DType::Bf16, "pgd_step gradient")?;
        ensure!(
            delta.rows == grad.rows && delta.cols == grad.cols,
            "pgd_step: shapes {}x{} and {}x{}",
            delta.rows,
            delta.cols,
            grad.rows,
            grad.cols
        );
        crate::backend::cpu::attack::check_pgd(delta.rows, lens, seq)?;
        let lens_dev = self.ints(lens.iter().copied())?;
        let cols = delta.cols;
        launch::pgd_step(self.exec(), delta.buf_mut()?, &grad.buf, &lens_dev, (lens.len(), seq, cols), step)
    }

    fn topk_flips(&self, prod: &DevMat, q: &TopkFlips) -> Result<Vec<Vec<(u32, f32)>>> {
        bf16_inputs("topk_flips", &[Some(prod)])?;
        crate::backend::cpu::attack::check_topk(prod.rows, prod.cols, q)?;
        let (sites, vocab, k) = (q.sites, prod.cols, q.k);
        let gains = DevBuf::new(&self.exec, sites * k * 4)?;
        let ids = DevBuf::new(&self.exec, sites * k * 4)?;
        let f = |v: &[f32]| DevBuf::from_slice(&self.exec, v);
        let (base, old_norm, norm) = (f(q.base)?, f(q.old_norm)?, f(q.norms)?);
        let old = self.ints(q.old.iter().map(|&v| v as usize))?;
        let allowed: Vec<u8> = q.allowed.iter().map(|&a| a as u8).collect();
        let allowed = DevBuf::from_slice(&self.exec, &allowed)?;
        launch::hotflip_topk(
            self.exec(),
            &gains,
            &ids,
            &prod.buf,
            (&base, &old, &old_norm),
            (&norm, &allowed),
            (sites, vocab, k),
            q.min_cos,
        )?;
        let (g, v) = (gains.to_vec::<f32>()?, ids.to_vec::<i32>()?);
        Ok((0..sites)
            .map(|s| {
                (0..k)
                    .map(|r| (v[s * k + r], g[s * k + r]))
                    .take_while(|&(id, _)| id >= 0)
                    .map(|(id, g)| (id as u32, g))
                    .collect()
            })
            .collect())
    }
}
