import ArgumentParser
import Foundation
import KVTCModel

/// `kvtc bench model`: GEMM, prefill and decode throughput as JSON.
struct BenchModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Measure SGEMM rate, prefill tokens/s (512, 2048) and decode tokens/s; prints JSON.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "Decode steps after a 512-token prefill.")
    var decodeSteps = 64

    @Option(name: .long, help: "Also write the JSON to this path.")
    var json: String?

    func run() throws {
        let model = try modelOptions.load()
        let result = try ModelBenchmark.run(model: model, decodeSteps: decodeSteps)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(result)
        print(String(decoding: data, as: UTF8.self))
        if let json { try data.write(to: URL(fileURLWithPath: json), options: .atomic) }
    }
}
