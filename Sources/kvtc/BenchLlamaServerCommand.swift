import ArgumentParser
import Foundation
import KVTCBenchmarks
import KVTCRuntime

/// `kvtc bench llama-server`: kvtc in front of a real llama-server (started here on
/// loopback): a returning conversation after llama-server restarted, served by recomputing,
/// by llama-server's own slot file, and by kvtc; the bytes kept; and how closely llama-server
/// continues from a kvtc-restored slot.
struct BenchLlamaServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llama-server",
        abstract: "Time to first token and bytes of a returning conversation through kvtc in front of llama-server.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "KVTC profile file (default: the model's default profile).")
    var profile: String?

    @Option(name: .long, help: "Nominal ratio of the KVTC chunks.")
    var ratio: Double = 16

    @Option(name: .long, help: "Threads of the llama-server (-t).")
    var threads = 2

    @Option(name: .long, help: "Tokens of the returning conversation's context.")
    var context = 4096

    @Option(name: .long, help: "New tokens of the returning turn.")
    var newTokens = 32

    @Option(name: .long, help: "Runs of each time-to-first-token measurement (the median is reported).")
    var runs = 3

    @Option(name: .long, help: "Teacher-forced held-out tokens of the agreement measurement.")
    var agreementTokens = 64

    @Option(name: .long, help: "Extra llama-server flags, space-separated (e.g. '-fa off').")
    var serverArgs = ""

    @Option(name: .long, help: "Write the JSON report here.")
    var json: String?

    func run() async throws {
        let model = try modelOptions.load()
        let profile = try ProfileResolver.profile(path: profile, model: model) { Progress.shared.status($0) }
        var bench = LlamaServerBenchmark(model: model, profile: profile, ratio: ratio) { Progress.shared.status($0) }
        bench.threads = threads
        bench.contextTokens = context
        bench.newTokens = newTokens
        bench.runs = runs
        bench.agreementTokens = agreementTokens
        bench.serverArguments = serverArgs.split(separator: " ").map(String.init)
        let r = try await bench.run()
        Progress.shared.done()
        print("llama-server (\(threads) threads\(r.serverArguments.isEmpty ? "" : ", " + r.serverArguments.joined(separator: " "))), a returning conversation: \(r.contextTokens) tokens of context + \(r.newTokens) new, llama-server restarted since the last turn")
        print("                               time to first token (median of \(runs))")
        print(String(format: "  llama-server recomputing      %7.3f s", r.recomputeTTFTSeconds))
        print(String(format: "  llama-server own slot file    %7.3f s   (restore %.1f ms of a %.1f MiB file)", r.ownRestoreTTFTSeconds,
                     r.ownRestoreMilliseconds, Double(r.ownSlotFileBytes) / 1048576))
        print(String(format: "  kvtc in front                 %7.3f s   (llama-server reported %@ tokens cached)", r.kvtcTTFTSeconds,
                     r.kvtcCachedTokens.map(String.init).joined(separator: "/")))
        print(String(format: "  of which kvtc's restore (lookup, decode, state file, llama-server's load) %.3f s and llama-server's prefill of the new tokens %.3f s",
                     r.kvtcRestoreRuns.sorted()[r.kvtcRestoreRuns.count / 2], r.kvtcPrefillRuns.sorted()[r.kvtcPrefillRuns.count / 2]))
        print(String(format: "kvtc TTFT is %.1fx lower than recomputing (floor 20x) and %.2fx llama-server's own restore (floor <= 2x)",
                     r.recomputeOverKVTC, r.kvtcOverOwnRestore))
        print(String(format: "bytes: llama-server's F16 slot file %.2f MiB, kvtc stores %.2f MiB: %.1fx fewer (floor 10x); compressed chunks %.1fx over fp16 (floor 17x)",
                     Double(r.ownSlotFileBytes) / 1048576, Double(r.kvtcStoredBytes) / 1048576, r.fileOverStored, r.chunkRatio))
        print(String(format: "agreement over %d teacher-forced tokens after a kvtc restore at %gx: mean KL %.4f nats (top-%d), top-1 %.1f%% (floors: KL <= 0.02, top-1 >= 95%%)",
                     r.agreementTokens, ratio, r.meanKL, r.agreementTopK, 100 * r.top1Agreement))
        if let json {
            try writeFile(json, Array(jsonString(r).utf8))
            warn("kvtc: wrote \(json)")
        }
    }
}
