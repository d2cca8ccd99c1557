//! The shape checks of the op set, shared by every backend: an input a backend cannot take is
//! refused before any work, with the same message on each.

use anyhow::{bail, ensure, Result};

/// `values` host values for a `rows × cols` matrix.
pub fn upload(values: usize, rows: usize, cols: usize) -> Result<()> {
    ensure!(values == rows * cols, "upload: {values} values for {rows}x{cols}");
    Ok(())
}

/// `y = act(x·Wᵀ + b) [+ r]` with `x` `rows × cols`, `W` of `w_shape`, `b` of `bias` entries and the
/// residual `r` of `residual`'s shape; returns `(n, k)`, W's output and input sizes.
pub fn linear(
    x: (usize, usize),
    w_shape: &[usize],
    bias: usize,
    residual: Option<(usize, usize)>,
) -> Result<(usize, usize)> {
    ensure!(w_shape.len() == 2, "linear: weight must be 2-D, got {w_shape:?}");
    let (n, k) = (w_shape[0], w_shape[1]);
    ensure!(x.1 == k, "linear: input has {} columns, weight expects {k}", x.1);
    ensure!(bias == n, "linear: bias has {bias} entries, expected {n}");
    if let Some((rr, rc)) = residual {
        ensure!(rr == x.0 && rc == n, "linear: residual is {rr}x{rc}, expected {}x{n}", x.0);
    }
    Ok((n, k))
}

/// Fused QKV `rows × cols` of `lens.len()` sequences padded to `seq`, over `heads` heads; returns
/// the hidden size and the head dimension.
pub fn attention(qkv: (usize, usize), lens: &[usize], seq: usize, heads: usize) -> Result<(usize, usize)> {
    let batch = lens.len();
    ensure!(qkv.0 == batch * seq, "attention: {} rows for {batch} sequences of {seq}", qkv.0);
    ensure!(
        heads > 0 && qkv.1 % 3 == 0 && (qkv.1 / 3) % heads == 0,
        "attention: {} columns for {heads} heads",
        qkv.1
    );
    valid_lengths("attention", lens, seq)?;
    let h = qkv.1 / 3;
    Ok((h, h / heads))
}

/// `x` of `rows` rows holds `lens.len()` sequences padded to `seq`, each with 1 to `seq` tokens.
pub fn sequences(op: &str, rows: usize, lens: &[usize], seq: usize) -> Result<()> {
    ensure!(rows == lens.len() * seq, "{op}: {rows} rows for {} sequences of {seq}", lens.len());
    valid_lengths(op, lens, seq)
}

fn valid_lengths(op: &str, lens: &[usize], seq: usize) -> Result<()> {
    ensure!(lens.iter().all(|&l| l > 0 && l <= seq), "{op}: sequence lengths must be in 1..={seq}");
    Ok(())
}

/// Every row index is below `total`.
pub fn rows_in(op: &str, rows: &[usize], total: usize) -> Result<()> {
    if let Some(r) = rows.iter().find(|&&r| r >= total) {
        bail!("{op}: row {r} out of {total}");
    }
    Ok(())
}

/// `dy` of `dy_rows` rows scattered to the listed rows of a `total`-row matrix.
pub fn scatter(dy_rows: usize, rows: &[usize], total: usize) -> Result<()> {
    ensure!(dy_rows == rows.len(), "scatter_rows: {dy_rows} rows for {} listed", rows.len());
    rows_in("scatter_rows", rows, total)
}

/// A parameter of `n` values with its gradient and two moments.
pub fn adamw(n: usize, grad: usize, m: usize, v: usize) -> Result<()> {
    ensure!(
        grad == n && m == n && v == n,
        "adamw: parameter of {n} values, gradient {grad}, moments {m} / {v}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mismatch_is_named() {
        fn e<T: std::fmt::Debug>(r: Result<T>) -> String {
            r.unwrap_err().to_string()
        }
        assert_eq!(linear((4, 8), &[3, 8], 3, None).unwrap(), (3, 8));
        assert_eq!(e(linear((4, 7), &[3, 8], 3, None)), "linear: input has 7 columns, weight expects 8");
        assert_eq!(e(linear((4, 8), &[3, 8], 2, None)), "linear: bias has 2 entries, expected 3");
        assert_eq!(e(linear((4, 8), &[3, 8], 3, Some((4, 2)))), "linear: residual is 4x2, expected 4x3");
        assert_eq!(e(linear((4, 8), &[24], 3, None)), "linear: weight must be 2-D, got [24]");
        assert_eq!(attention((10, 24), &[5, 3], 5, 2).unwrap(), (8, 4));
        assert_eq!(e(attention((10, 24), &[5, 6], 5, 2)), "attention: sequence lengths must be in 1..=5");
        assert_eq!(e(attention((10, 24), &[5, 3], 5, 3)), "attention: 24 columns for 3 heads");
        assert_eq!(e(sequences("mean_pool", 9, &[5, 3], 5)), "mean_pool: 9 rows for 2 sequences of 5");
        assert_eq!(e(rows_in("gather_rows", &[0, 7], 7)), "gather_rows: row 7 out of 7");
        assert_eq!(e(scatter(2, &[1], 4)), "scatter_rows: 2 rows for 1 listed");
        assert_eq!(e(adamw(4, 4, 4, 3)), "adamw: parameter of 4 values, gradient 4, moments 4 / 3");
        assert_eq!(e(upload(5, 2, 3)), "upload: 5 values for 2x3");
    }
}
