import ArgumentParser
import Foundation
import KVTCCache
import KVTCModels

/// `kvtc capture`: run text through the model and save its KV cache.
struct CaptureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Prefill text through the model and write its KV cache as a safetensors interchange file.")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "Text file to capture.")
    var text: String?

    @Option(name: .long, help: "Literal text to capture instead of a file.")
    var prompt: String?

    @Option(name: [.short, .long], help: "Output path (.safetensors).")
    var output: String

    @Option(name: .long, help: "Keep the first N text tokens (0 = all, up to the context length).")
    var tokens = 0

    @Flag(name: .long, inversion: .prefixedNo, help: "Prepend the BOS token (id 1).")
    var bos = true

    @Flag(name: .long, help: "Wrap the text as a user message in the chat template.")
    var chat = false

    @Option(name: .long, help: "Stored precision: f16, bf16 or f32.")
    var dtype = "f16"

    func validate() throws {
        guard (text == nil) != (prompt == nil) else { throw ValidationError("give either --text FILE or --prompt TEXT") }
        guard ["f16", "bf16", "f32"].contains(dtype.lowercased()) else {
            throw ValidationError("--dtype must be f16, bf16 or f32")
        }
    }

    func run() throws {
        let model = try modelOptions.load()
        let input: String
        if let prompt {
            input = prompt
        } else {
            do { input = try String(contentsOfFile: text!, encoding: .utf8) } catch { throw CommandError(text!, "cannot be read as UTF-8 text") }
        }
        var ids = chat ? model.chatPromptTokens(user: input)
                       : model.tokenizer.encode(input, parseSpecial: false)
        if tokens > 0 { ids = Array(ids.prefix(tokens)) }
        if bos && !chat, let b = model.tokenizer.bosID { ids.insert(b, at: 0) }
        let limit = model.dimensions.contextLength
        if ids.count > limit {
            modelCommandLog("kvtc: truncating \(ids.count) tokens to the context of \(limit)")
            ids = Array(ids.prefix(limit))
        }
        var cache = model.makeCache(reservingCapacity: ids.count)
        let (_, seconds) = try modelCommandTime { try model.prefill(tokens: ids, cache: &cache, logits: .none) }
        let type: TensorDType = dtype.lowercased() == "f32" ? .f32 : (dtype.lowercased() == "bf16" ? .bf16 : .f16)
        try KVCacheFile.write(cache, to: output, dtype: type)
        modelCommandLog(String(format: "captured %d tokens (%@) in %.2f s -> %@", cache.tokenCount,
                          cache.geometry.description, seconds, output))
    }
}
