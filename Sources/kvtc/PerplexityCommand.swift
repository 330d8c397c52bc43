import ArgumentParser
import Foundation
import KVTCModels

/// `kvtc perplexity`: score a text file with the model.
struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity of the leading tokens of a text file (BOS prepended).",
        discussion: "References (llama.cpp on the same file): /usr/share/common-licenses/GPL-3 with 511 tokens gives 20.03 for smollm2-135m and 12.915 for gemma3-270m; with 2047 tokens gemma3-270m gives 16.00.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Argument(help: "A UTF-8 text file.")
    var file: String

    @Option(name: .long, help: "Number of text tokens to score after BOS (0 = all).")
    var tokens = 511

    @Flag(name: .long, inversion: .prefixedNo, help: "Prepend the model's BOS token.")
    var bos = true

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() throws {
        let model = try modelOptions.load()
        let text = try String(contentsOfFile: file, encoding: .utf8)
        var ids = model.tokenizer.encode(text, parseSpecial: false)
        if tokens > 0 { ids = Array(ids.prefix(tokens)) }
        if bos, let b = model.tokenizer.bosID { ids.insert(b, at: 0) }
        guard ids.count <= model.dimensions.contextLength else {
            throw ValidationError("\(ids.count) tokens exceed the context of \(model.dimensions.contextLength); use --tokens")
        }
        let (result, seconds) = try modelCommandTime { try model.perplexity(tokens: ids) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(String(format: "perplexity %.4f (mean NLL %.5f nats over %d predictions, %.2f s)",
                         result.perplexity, result.meanNegativeLogLikelihood, result.predictions, seconds))
        }
    }
}
