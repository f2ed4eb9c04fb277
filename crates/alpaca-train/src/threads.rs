//! Worker-thread setup shared by every command.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the thread calling [`set_threads`] becomes one of the pool's workers.
static CALLER_JOINS_POOL: AtomicBool = AtomicBool::new(false);

/// Makes the thread that later calls [`set_threads`] the pool's first worker instead of a
/// thread that hands work to the pool and sleeps. For a program's main thread (the CLI): with
/// the caller outside, `--threads 2` means two workers plus the caller on two cores, and the
/// workers' spinning between parallel ops (rayon yields for a while before it sleeps) competed
/// with the caller's serial work: NER prediction at batch 1 ran 26% faster with the caller
/// inside. Not for library callers whose calling thread may end (a test's thread): a worker
/// that is gone would stay in the pool.
pub fn caller_joins_pool() {
    CALLER_JOINS_POOL.store(true, Ordering::Relaxed);
}

/// Sets the number of worker threads for rayon (our kernels) and candle's GEMM (which reads
/// `RAYON_NUM_THREADS`). `None` means all cores. Call once, before any tensor work.
pub fn set_threads(threads: Option<usize>) -> usize {
    let count = threads.filter(|&n| n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Set before any other thread exists (candle reads it when its pools start).
    std::env::set_var("RAYON_NUM_THREADS", count.to_string());
    // candle's element-wise ops run on a second, spinning thread pool that competes with
    // rayon (our kernels, GEMM) for the same cores; measured on the MiniLM NER step, keeping
    // that pool to the calling thread was 9% faster on 2 cores.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tune_allocator();
    // Fails only if a pool already exists (e.g. a second call in tests); that pool is kept.
    let mut pool = rayon::ThreadPoolBuilder::new().num_threads(count);
    if CALLER_JOINS_POOL.load(Ordering::Relaxed) {
        pool = pool.use_current_thread();
    }
    let _ = pool.build_global();
    count
}

/// Keeps freed tensor buffers in the process instead of returning them to the OS.
///
/// glibc hands allocations above `M_MMAP_THRESHOLD` (dynamic, up to 32 MiB) straight to mmap
/// and unmaps them on free, and trims the heap top above `M_TRIM_THRESHOLD`; a training step
/// allocates and frees the same large buffers every time, so each step paid for fresh zeroed
/// pages (page faults were ~12% of a MiniLM step in `perf`). Raising both thresholds lets
/// malloc reuse the memory.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters; it is called before the
        // big allocations and takes plain integers.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
