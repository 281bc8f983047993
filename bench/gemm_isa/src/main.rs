//! GFLOP/s of `gemm::gemm` (f32) at the matrix shapes of ResNet-18's 3x3 convolutions lowered to
//! im2col products (batch 128), on 2 rayon threads.
use std::time::Instant;

fn gflops(m: usize, k: usize, n: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let run = |c: &mut [f32]| {
        // SAFETY: every pointer covers its matrix (column-major strides: 1 within a column).
        unsafe {
            gemm::gemm(
                m, n, k,
                c.as_mut_ptr(), m as isize, 1, false,
                a.as_ptr(), m as isize, 1,
                b.as_ptr(), k as isize, 1,
                0.0f32, 1.0f32, false, false, false,
                gemm::Parallelism::Rayon(2),
            );
        }
    };
    run(&mut c);
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        run(&mut c);
    }
    (2 * m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    println!("x86-v4 (AVX-512) kernels: {}", cfg!(feature = "x86-v4"));
    println!("| output channels x (in channels x 9) x (batch x H x W) | GFLOP/s |");
    println!("|---|---|");
    for (co, ci, hw) in [(16, 16, 32), (64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)] {
        let (m, k, n) = (co, ci * 9, 128 * hw * hw);
        println!("| {m} x {k} x {n} | {:.1} |", gflops(m, k, n));
    }
}
