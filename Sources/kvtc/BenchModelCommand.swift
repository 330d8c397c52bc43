import ArgumentParser
import Foundation
import KVTCBenchmarks
import KVTCModels
import KVTCNumerics

/// `kvtc bench model`: GEMM, prefill and decode throughput as a table (and JSON).
struct BenchModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Measure SGEMM rate, prefill tokens/s (512, 2048) and decode tokens/s.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "Decode steps after a 512-token prefill.")
    var decodeSteps = 64

    @Option(name: .long, help: "Also write the figures as JSON to this path.")
    var json: String?

    func run() throws {
        let model = try modelOptions.load()
        let result = try ModelBenchmark.run(model: model, decodeSteps: decodeSteps)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(result)
        print("kvtc bench model: \(URL(fileURLWithPath: model.path).lastPathComponent), \(model.dimensions.layers) layers")
        print("measure                      value")
        for key in result.prefillTokensPerSecond.keys.sorted(by: { Int($0) ?? 0 < Int($1) ?? 0 }) {
            print("prefill \(key.padding(toLength: 5, withPad: " ", startingAt: 0)) tokens   " + String(format: "%9.1f tokens/s", result.prefillTokensPerSecond[key]!))
        }
        for key in result.extendTokensPerSecond.keys.sorted(by: { $0.count == $1.count ? $0 < $1 : $0.count < $1.count }) {
            print("extend \(key.padding(toLength: 8, withPad: " ", startingAt: 0))    " + String(format: "%9.1f tokens/s", result.extendTokensPerSecond[key]!))
        }
        print(String(format: "decode               %9.1f tokens/s", result.decodeTokensPerSecond))
        print(String(format: "prefill 2048 useful  %9.1f GFLOP/s (%.0f%% of the GEMM rate; floor 40%%)",
                     result.prefillUsefulGflops2048, 100 * result.prefillGemmEfficiency))
        print(String(format: "sgemm rate           %9.1f GFLOP/s (OpenBLAS %@ kernels, %d threads)", result.gemmGflops, BLAS.coreName, BLAS.threadCount))
        print("backends: \(backendSummary())")
        if let json { try data.write(to: URL(fileURLWithPath: json), options: .atomic) }
    }
}
