//! Add, gradient accumulation, row gather and scatter (the CUDA kernels of kernels/elementwise.cu).

use anyhow::Result;

use super::Mat;
use crate::backend::shapes;

/// `a + b`
pub fn add(a: &Mat, b: &Mat) -> Result<Mat> {
    a.check_same(b, "add")?;
    let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
    Ok(Mat { rows: a.rows, cols: a.cols, data })
}

/// `acc += x`
pub fn add_assign(acc: &mut Mat, x: &Mat) -> Result<()> {
    acc.check_same(x, "add_assign")?;
    acc.data.iter_mut().zip(&x.data).for_each(|(a, b)| *a += b);
    Ok(())
}

/// `out[i, :] = x[rows[i], :]`
pub fn gather_rows(x: &Mat, rows: &[usize]) -> Result<Mat> {
    shapes::rows_in("gather_rows", rows, x.rows)?;
    let mut out = Mat::zeros(rows.len(), x.cols);
    for (i, &r) in rows.iter().enumerate() {
        out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(x.row(r));
    }
    Ok(out)
}

/// `out[rows[i], :] = dy[i, :]`, zero elsewhere (the backward of [`gather_rows`]).
pub fn scatter_rows(dy: &Mat, rows: &[usize], total: usize) -> Result<Mat> {
    shapes::scatter(dy.rows, rows, total)?;
    let mut out = Mat::zeros(total, dy.cols);
    for (i, &r) in rows.iter().enumerate() {
        out.data[r * dy.cols..(r + 1) * dy.cols].copy_from_slice(dy.row(i));
    }
    Ok(out)
}
