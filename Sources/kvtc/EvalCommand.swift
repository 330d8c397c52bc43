import ArgumentParser
import Foundation
import KVTCCalibration
import KVTCCodec
import KVTCEvaluation
import KVTCModels

struct EvalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Measure what compression does to the model's outputs, against baselines.",
        discussion: """
        Runs the quality protocol on the held-out corpus: each window's context is cached, \
        compressed and restored, the continuation is fed teacher-forced with the exact and the \
        decoded cache, and the next-token distributions are compared (mean KL, top-1 agreement, \
        perplexity). Profiles are built from the calibration corpus on first use and cached.
        """)

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(help: "KVTC nominal ratios, comma-separated.") var ratios: String = "4,8,16,32,64"
    @Option(help: "Baselines, comma-separated, or 'all' / 'none': \(Baseline.allCases.map(\.rawValue).joined(separator: ", ")).")
    var baselines: String = "all"
    @Option(help: "Context tokens per window (BOS included).") var context: Int = 1024
    @Option(help: "Continuation tokens per window.") var continuation: Int = 64
    @Option(help: "Windows per held-out text.") var windowsPerText: Int = 2
    @Option(help: "Calibration tokens for the profiles.") var calibrationTokens: Int = 32768
    @Option(help: "Calibrate the profiles from the text files in DIR/calibration instead of the bundled corpus's (the held-out windows stay the bundled corpus's).")
    var calibrationCorpus: String?
    @Option(help: "Keep at most this many principal components per stream in the KVTC profiles (fewer components decode faster).")
    var rankCap: Int?
    @Option(help: "Recipe of the profile reported as kvtc (the recipes baseline adds the others): \(recipeNames).")
    var recipe: CalibrationRecipe = .standard
    @Option(help: "The keys' share of each ratio's bits in the KVTC profiles (0.5: each stream gets the ratio, as in the paper).")
    var keyShare: Double = CalibrationOptions.standardKeyShare
    @Option(help: "Group sizes the bit allocator may use, ascending from 1 (default: the paper's \(BitPlan.standardGroupSizes.map(String.init).joined(separator: ","))).")
    var groupSizes: String?
    @Option(help: "Passkey retrieval trials per method (0 skips the task).") var retrievalTrials: Int = 5
    @Option(help: "Write results as JSON to this file.") var json: String?
    @Option(help: "Write the rate-distortion plot (SVG) to this file.") var plot: String?

    func validate() throws {
        guard context >= 256, continuation >= 2, windowsPerText >= 1 else {
            throw ValidationError("--context >= 256, --continuation >= 2, --windows-per-text >= 1")
        }
        guard context > 132 + 4 else { throw ValidationError("--context must exceed the protected tokens") }
        _ = try parseBaselines()
        if let rankCap, rankCap < 1 { throw ValidationError("--rank-cap must be positive") }
        guard keyShare > 0.05, keyShare < 0.95 else { throw ValidationError("--key-share must be in 0.05...0.95") }
        if let groupSizes { _ = try parseGroupSizes(groupSizes) }
    }

    func parseBaselines() throws -> [Baseline] {
        if baselines == "all" { return Baseline.allCases }
        if baselines == "none" { return [] }
        return try baselines.split(separator: ",").map {
            guard let b = Baseline(rawValue: String($0)) else { throw ValidationError("unknown baseline '\($0)'") }
            return b
        }
    }

    func run() async throws {
        let progress = Progress.shared
        let model = try modelOptions.load()
        var corpus = try Corpus.bundled()
        if let calibrationCorpus {
            let other = try Corpus(directory: URL(fileURLWithPath: calibrationCorpus))
            corpus = Corpus(calibration: other.calibration, heldOut: corpus.heldOut)
        }
        var suite = EvaluationSuite(model: model, corpus: corpus, ratios: try parseRatios(ratios), baselines: try parseBaselines())
        suite.calibration.tokens = calibrationTokens
        suite.calibration.calibration.rankCap = rankCap
        suite.calibration.calibration.recipe = recipe
        suite.calibration.calibration.keyShare = keyShare
        if let groupSizes { suite.calibration.calibration.groupSizes = try parseGroupSizes(groupSizes) }
        var options = HarnessOptions()
        options.contextTokens = context
        options.continuationTokens = continuation
        options.windowsPerText = windowsPerText
        let windows = QualityHarness.windows(model: model, documents: corpus.heldOut, options: options)
        guard !windows.isEmpty else { throw CommandError("no held-out text is long enough for --context \(context)") }
        let compressors = try suite.compressors(progress: { progress.status($0) })
        let harness = try QualityHarness(model: model, windows: windows, scoreBook: suite.scoreBook, progress: { progress.status($0) })
        var results: [MethodResult] = []
        for (i, c) in compressors.enumerated() {
            progress.status("evaluating \(c.method) \(c.setting) (\(i + 1)/\(compressors.count)) on \(windows.count) windows")
            results.append(try harness.evaluate(c))
        }
        var retrieval: [RetrievalResult] = []
        if retrievalTrials > 0 {
            let task = PasskeyTask(model: model, count: retrievalTrials, contextTokens: context)
            progress.status("passkey retrieval: prefilling \(retrievalTrials) prompts")
            let caches = try task.prepare(model: model, scoreBook: suite.scoreBook)
            retrieval.append(try task.run(model: model, caches: caches, compressor: nil))
            for (i, c) in compressors.enumerated() {
                progress.status("passkey retrieval: \(c.method) \(c.setting) (\(i + 1)/\(compressors.count))")
                retrieval.append(try task.run(model: model, caches: caches, compressor: c))
            }
        }
        progress.done()
        print("kvtc eval: \(windows.count) held-out windows, context \(context), continuation \(continuation), model \(model.identity.prefix(12))…")
        print(EvaluationReport.table(results))
        if !retrieval.isEmpty {
            print("\npasskey retrieval (\(retrievalTrials) trials, fact inside the compressed part):")
            for r in retrieval {
                let name = "\(r.method) \(r.setting)"
                print("  " + name.padding(toLength: max(name.count, 32), withPad: " ", startingAt: 0) + " \(r.exact_matches)/\(r.trials)")
            }
        }
        let info = ["model": model.identity, "corpus": corpus.hash, "context": "\(context)", "continuation": "\(continuation)",
                    "windows": "\(windows.count)"]
        if let json { try writeFile(json, Array(EvaluationReport.json(results, extra: info, retrieval: retrieval).utf8)) }
        if let plot {
            try writeFile(plot, Array(EvaluationReport.svg(results, title: "KV cache compression: mean KL vs ratio (\(URL(fileURLWithPath: model.path).lastPathComponent))").utf8))
        }
    }
}
