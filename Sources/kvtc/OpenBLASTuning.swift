#if canImport(Glibc)
import Glibc
#endif

/// Process-level tuning of OpenBLAS that has to happen before the library loads.
///
/// OpenBLAS's worker threads spin (calling `sched_yield`) for `2^OPENBLAS_THREAD_TIMEOUT`
/// cycles after each threaded call before they sleep; the default is 2^28 (~0.1 s). The
/// forward pass alternates threaded GEMMs with attention that runs on our own threads, so
/// on a 2-core machine an idle BLAS worker spinning next to them took ~15% of the CPU
/// (`perf`: `__schedule`, `sched_yield`). With 2^18 cycles (~0.1 ms) prefill of 2048 tokens
/// went from 380 to 480 tokens/s and decode from 35 to 38 tokens/s (`kvtc bench model`).
/// The library reads the variable once, when it is loaded, so the process re-executes
/// itself with it set. A value set by the user is left alone.
enum OpenBLASTuning {
    static let variable = "OPENBLAS_THREAD_TIMEOUT"
    static let defaultTimeout = "18"

    /// Re-executes the process with ``variable`` set unless it already is. Returns (and
    /// runs with OpenBLAS's default) if re-execution is impossible.
    static func applyBeforeLoading() {
        #if os(Linux)
        guard getenv(variable) == nil else { return }
        setenv(variable, defaultTimeout, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        #endif
    }
}
