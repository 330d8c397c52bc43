import ArgumentParser
import Foundation
import KVTCBenchmarks
import KVTCModels
import KVTCNumerics

/// `kvtc bench model`: prefill and decode throughput at the model's precision beside the f32
/// reference path, and each projection's product rate with both libraries, as tables (and
/// JSON).
struct BenchModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Measure prefill tokens/s (512, 2048), decode tokens/s and each projection's GFLOP/s, bf16 beside f32.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "Decode steps after a 512-token prefill.")
    var decodeSteps = 64

    @Flag(name: .long, help: "Skip the f32 reference run (only the model's own precision).")
    var noReference = false

    @Option(name: .long, help: "Also write the figures as JSON to this path.")
    var json: String?

    func run() throws {
        let model = try modelOptions.load()
        modelCommandLog("kvtc: benchmarking \(model.precision) (\(model.precision.engineDescription))")
        let result = try ModelBenchmark.run(model: model, decodeSteps: decodeSteps)
        var reference: ModelBenchmarkResult?
        if model.precision != .f32 && !noReference {
            let f32 = try ModelRegistry.load(path: model.path, options: ModelLoadOptions(identity: model.identity, precision: .f32))
            modelCommandLog("kvtc: benchmarking the f32 reference path (\(ModelPrecision.f32.engineDescription))")
            reference = try ModelBenchmark.run(model: f32, decodeSteps: decodeSteps)
        }
        modelCommandLog("kvtc: timing each projection with both libraries")
        let projections = ModelBenchmark.projectionRates(model.projections, layers: model.dimensions.layers,
                                                         rows: [1, model.prefillChunk])
        let report = ModelBenchmarkReport(precision: model.precision.rawValue, onednnISA: OneDNN.isa, model: result,
                                          reference: reference, projections: projections)

        print("kvtc bench model: \(URL(fileURLWithPath: model.path).lastPathComponent), \(model.dimensions.layers) layers")
        let columns = [model.precision.rawValue] + (reference == nil ? [] : ["f32"])
        print("measure".padding(toLength: 26, withPad: " ", startingAt: 0)
              + columns.map { $0.leftPadded(to: 12) }.joined() + "  unit")
        func row(_ label: String, _ value: (ModelBenchmarkResult) -> Double?, unit: String) {
            let values = [result] + (reference.map { [$0] } ?? [])
            print(label.padding(toLength: 26, withPad: " ", startingAt: 0)
                  + values.map { (value($0).map { String(format: "%.1f", $0) } ?? "-").leftPadded(to: 12) }.joined() + "  " + unit)
        }
        for key in result.prefillTokensPerSecond.keys.sorted(by: { Int($0) ?? 0 < Int($1) ?? 0 }) {
            row("prefill \(key) tokens", { $0.prefillTokensPerSecond[key] }, unit: "tokens/s")
        }
        for key in result.extendTokensPerSecond.keys.sorted(by: { $0.count == $1.count ? $0 < $1 : $0.count < $1.count }) {
            row("extend \(key)", { $0.extendTokensPerSecond[key] }, unit: "tokens/s")
        }
        row("decode at 512", { $0.decodeTokensPerSecond }, unit: "tokens/s")
        row("prefill 2048 useful", { $0.prefillUsefulGflops2048 }, unit: "GFLOP/s")
        print(String(format: "sgemm 2048^3 (OpenBLAS %@, %d threads): %.1f GFLOP/s", BLAS.coreName, BLAS.threadCount, result.gemmGflops))
        print("")
        print("projection".padding(toLength: 18, withPad: " ", startingAt: 0) + "out x in".leftPadded(to: 14)
              + "rows".leftPadded(to: 7) + "bf16 oneDNN".leftPadded(to: 14) + "f32 OpenBLAS".leftPadded(to: 14) + "  GFLOP/s")
        for p in projections {
            print(p.name.padding(toLength: 18, withPad: " ", startingAt: 0) + "\(p.outFeatures) x \(p.inFeatures)".leftPadded(to: 14)
                  + "\(p.rows)".leftPadded(to: 7) + (p.bf16Gflops.map { String(format: "%.1f", $0) } ?? "-").leftPadded(to: 14)
                  + String(format: "%.1f", p.f32Gflops).leftPadded(to: 14))
        }
        print("backends: \(backendSummary(model: model.precision))")
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: json), options: .atomic)
        }
    }
}

extension String {
    /// The string right-aligned in `width` columns.
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
