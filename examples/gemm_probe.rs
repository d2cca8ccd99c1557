use std::time::Instant;
use admix::backend::cpu::Mat;
fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(2).build_global().unwrap();
    let (m, n, k) = (4096, 1536, 384);
    let x = Mat { rows: m, cols: k, data: vec![0.01; m * k] };
    let w = admix::model::weights::Tensor::from_vec(vec![n, k], vec![0.02; n * k]);
    let b = admix::model::weights::Tensor::from_vec(vec![n], vec![0.0; n]);
    use admix::backend::Backend;
    for act in [admix::backend::Activation::Identity, admix::backend::Activation::Gelu] {
        for _ in 0..3 {
            let t = Instant::now();
            let _ = admix::backend::cpu::Cpu.linear(&x, &w, &b, act, None).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!("{act:?} {:.1} ms {:.0} GFLOP/s", s * 1e3, 2.0 * (m * n * k) as f64 / s / 1e9);
        }
    }
    // raw gemm, row-major rhs
    let mut dst = vec![0f32; m * n];
    let wt = vec![0.02f32; k * n];
    for _ in 0..3 {
        let t = Instant::now();
        unsafe { gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, false, x.data.as_ptr(), 1, k as isize, wt.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, if std::env::var("ST").is_ok() { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(2) }); }
        let s = t.elapsed().as_secs_f64();
        println!("raw rowmajor rhs {:.1} ms {:.0} GFLOP/s", s * 1e3, 2.0 * (m * n * k) as f64 / s / 1e9);
    }
}
