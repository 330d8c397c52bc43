#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KVTCNumerics

/// Process-level tuning of OpenBLAS, libgomp and glibc's allocator that has to happen before
/// the libraries load: the process re-executes itself with the variables set.
///
/// OpenBLAS's worker threads spin (calling `sched_yield`) for `2^OPENBLAS_THREAD_TIMEOUT`
/// cycles after each threaded call before they sleep; the default is 2^28 (~0.1 s). The
/// forward pass alternates threaded GEMMs with attention that runs on our own threads, so
/// on a 2-core machine an idle BLAS worker spinning next to them took ~15% of the CPU
/// (`perf`: `__schedule`, `sched_yield`). With 2^18 cycles (~0.1 ms) prefill of 2048 tokens
/// went from 380 to 480 tokens/s and decode from 35 to 38 tokens/s (`kvtc bench model`).
/// The library reads the variable once, when it is loaded, so the process re-executes
/// itself with it set. A value set by the user is left alone.
///
/// The same re-execution corrects OpenBLAS's choice of CPU kernels when it fell back to a
/// generic SSE3 family on a CPU with AVX-512 or AVX2 it does not recognise
/// (``BLAS/betterCoreType(chosen:cpuFlags:)``), by setting `OPENBLAS_CORETYPE`; a value set by
/// the user or the machine is left alone.
///
/// oneDNN's OpenMP threads (libgomp) likewise spin after each parallel region, for
/// `GOMP_SPINCOUNT` iterations (default 300,000), read when libgomp loads. Spinning that long
/// next to OpenBLAS's workers and the server's tasks made a store restore of 4,096 tokens
/// take 0.76 s with the bfloat16 codec instead of 0.32 s (`kvtc bench serve`); not spinning
/// at all (`OMP_WAIT_POLICY=PASSIVE`) put a futex wake-up in each of a decode step's ~250
/// oneDNN calls: 71 tokens/s, against 150 with a spin of 10,000 (`kvtc bench model`). The
/// process runs with ``spinCount`` unless `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` is set.
///
/// A cache of 4,096 tokens is 189 MB of f32 rows, and the codec's and the model's scratch
/// are of that order: in 4 KiB pages, first touching them was a third of a restore
/// (46,000 page faults; `kvtc bench codec` on a real cache decompressed in 0.267 s, of which
/// the reconstruction GEMM 0.187 s). glibc's `glibc.malloc.hugetlb=1` tunable advises the
/// kernel to back the allocator's memory with transparent huge pages (where the machine's
/// THP mode is `madvise`, as Debian's is), which took the same decompress to 0.199 s and the
/// compress from 0.437 s to 0.273 s. It is added to `GLIBC_TUNABLES` unless that already
/// names it; with THP off it changes nothing.
enum ProcessTuning {
    static let variable = "OPENBLAS_THREAD_TIMEOUT"
    static let defaultTimeout = "18"
    static let coreTypeVariable = "OPENBLAS_CORETYPE"
    static let openMPWaitPolicy = "OMP_WAIT_POLICY"
    static let openMPSpinCount = "GOMP_SPINCOUNT"
    static let spinCount = "10000"
    static let glibcTunables = "GLIBC_TUNABLES"
    /// Set before re-executing, so the process re-executes at most once even where a
    /// variable does not survive `execv` (glibc drops `GLIBC_TUNABLES` for set-user-ID programs).
    static let reexecutedMarker = "KVTC_PROCESS_TUNED"
    static let hugePagesTunable = "glibc.malloc.hugetlb"

    /// The CPU's feature flags from `/proc/cpuinfo` (empty where it cannot be read).
    static func cpuFlags() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }

    /// `GLIBC_TUNABLES` with huge pages for the allocator added, or `nil` when the current
    /// value (which may name other tunables) already sets them.
    static func tunablesWithHugePages(_ current: String?) -> String? {
        let setting = "\(hugePagesTunable)=1"
        guard let current, !current.isEmpty else { return setting }
        if current.split(separator: ":").contains(where: { $0.hasPrefix("\(hugePagesTunable)=") }) { return nil }
        return current + ":" + setting
    }

    /// Re-executes the process with ``variable``, the OpenMP spin count, huge pages for the
    /// allocator (and, where OpenBLAS fell back to generic kernels, ``coreTypeVariable``) set
    /// unless they already are. Returns (and runs with the libraries' defaults) if
    /// re-execution is impossible.
    static func applyBeforeLoading() {
        #if os(Linux)
        guard getenv(reexecutedMarker) == nil else { return }
        var changed = false
        if getenv(variable) == nil {
            setenv(variable, defaultTimeout, 1)
            changed = true
        }
        if getenv(openMPWaitPolicy) == nil, getenv(openMPSpinCount) == nil {
            setenv(openMPSpinCount, spinCount, 1)
            changed = true
        }
        if getenv(coreTypeVariable) == nil, let core = BLAS.betterCoreType(cpuFlags: cpuFlags()) {
            setenv(coreTypeVariable, core, 1)
            changed = true
        }
        if let tunables = tunablesWithHugePages(getenv(glibcTunables).map { String(cString: $0) }) {
            setenv(glibcTunables, tunables, 1)
            changed = true
        }
        if changed {
            setenv(reexecutedMarker, "1", 1)
            execv("/proc/self/exe", CommandLine.unsafeArgv)
        }
        #endif
    }
}
