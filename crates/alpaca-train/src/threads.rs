//! Worker-thread setup shared by every command.

/// Sets the number of worker threads for rayon (our kernels) and candle's GEMM (which reads
/// `RAYON_NUM_THREADS`). `None` means all cores. Call once, before any tensor work.
pub fn set_threads(threads: Option<usize>) -> usize {
    let count = threads.filter(|&n| n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // SAFETY-free: setting an environment variable before other threads exist.
    std::env::set_var("RAYON_NUM_THREADS", count.to_string());
    // Fails only if a pool already exists (e.g. a second call in tests); that pool is kept.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(count)
        .build_global();
    count
}
