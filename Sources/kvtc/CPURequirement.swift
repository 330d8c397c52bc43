#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The vector units the library targets are compiled for (`vectorUnits` in Package.swift:
/// LLVM's `haswell` CPU, i.e. AVX2, FMA and the bit-manipulation instructions that came with
/// them). This target is compiled without them, so the check runs before any code that may
/// use them; on a CPU that lacks them the tool exits with a message instead of dying on an
/// illegal instruction somewhere later.
enum CPURequirement {
    /// `/proc/cpuinfo` flags of the instructions `-target-cpu haswell` lets the compiler use.
    static let flags = ["avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "popcnt", "abm"]

    /// The required flags `cpuFlags` lacks (none where the flags cannot be read).
    static func missing(from cpuFlags: Set<String>) -> [String] {
        guard !cpuFlags.isEmpty else { return [] }
        return flags.filter { !cpuFlags.contains($0) }
    }

    /// Exits with status 1 and a message naming what is missing if this CPU cannot run the
    /// libraries' code.
    static func check() {
        #if arch(x86_64) && os(Linux)
        let lacking = missing(from: ProcessTuning.cpuFlags())
        guard !lacking.isEmpty else { return }
        let message = "kvtc: this build needs an x86-64 CPU with AVX2 and FMA (Intel Haswell or later, AMD Zen); "
            + "this CPU lacks \(lacking.joined(separator: ", "))\n"
        FileHandle.standardError.write(Data(message.utf8))
        exit(1)
        #endif
    }
}
