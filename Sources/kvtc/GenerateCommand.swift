import ArgumentParser
import Foundation
import KVTCCodec
import KVTCNumerics
import KVTCGGUF
import KVTCModels
import KVTCTokenizers

/// `kvtc generate`: stream a reply from the model.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text with the model, streaming tokens (greedy by default).")

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "The prompt (a user message with --chat).")
    var prompt: String

    @Option(name: .long, help: "System prompt (default: the model's own).")
    var system: String?

    @Flag(name: .long, help: "Wrap the prompt in the model's chat template as a user turn.")
    var chat = false

    @Option(name: .long, help: "Maximum tokens to generate.")
    var maxTokens = 128

    @Option(name: .long, help: "Sampling temperature (0 = greedy).")
    var temperature: Float = 0

    @Option(name: .long, help: "Keep only the K most likely tokens (0 = all).")
    var topK = 0

    @Option(name: .long, help: "Nucleus sampling threshold (1 = off).")
    var topP: Float = 1

    @Option(name: .long, help: "Random seed for sampling.")
    var seed: UInt64 = 0

    @Flag(name: .long, help: "Print timing to standard error.")
    var stats = false

    func validate() throws {
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
        guard temperature >= 0 else { throw ValidationError("--temperature must be >= 0") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
    }

    func run() throws {
        let model = try modelOptions.load()
        // A raw prompt starts a document, so it gets BOS as in training; the chat template
        // starts with its own turn marker.
        let tokens = chat ? model.chatPromptTokens(user: prompt, system: system)
                          : model.tokenizer.encode(prompt, addBOS: true)
        var cache = model.makeCache(reservingCapacity: tokens.count + maxTokens)
        let sampling = SamplingOptions(temperature: temperature, topK: topK, topP: topP, seed: seed)
        let result = try model.generate(promptTokens: tokens, cache: &cache, maxTokens: maxTokens,
                                        sampling: sampling) { _, piece in
            FileHandle.standardOutput.write(Data(piece.utf8))
            return true
        }
        print()
        if stats {
            let decodeRate = result.decodeSeconds > 0 ? Double(max(0, result.tokens.count - 1)) / result.decodeSeconds : 0
            modelCommandLog(String(format: "prompt %d tokens in %.2f s (%.1f tok/s); generated %d tokens (%.1f tok/s); stop: %@",
                              result.promptTokenCount, result.prefillSeconds,
                              Double(result.promptTokenCount) / max(result.prefillSeconds, 1e-9),
                              result.tokens.count, decodeRate, result.stopReason.rawValue))
        }
    }
}

/// Options shared by the commands that run the model.
struct ModelCommandOptions: ParsableArguments {
    @Option(name: .long, help: "A model name from `kvtc models` or a GGUF file (default: \(ModelRegistry.defaultModelName), fetched into the kvtc cache).")
    var model: String?
    @Option(help: "Matrix products of the codec and the model: onednn (bfloat16 on the CPU's BF16 unit) or openblas (f32); default: KVTC_BACKEND, else onednn where the CPU has the unit.")
    var backend: GEMMBackend?
    @Option(help: "The model's projections: bf16 (oneDNN, half the weight bytes) or f32 (OpenBLAS, the reference path); default: bf16 when the backend is onednn.")
    var precision: ModelPrecision?
    @Option(help: "The codec's whole-cache reconstruction on oneDNN: int8 (VNNI's integer dot products) or bf16; default: int8 where the CPU has AVX-512 VNNI.")
    var reconstruction: ReconstructionArithmetic?

    func validate() throws {
        GEMMBackend.select(backend)
        ReconstructionArithmetic.select(reconstruction)
        if let precision, !precision.isAvailable {
            throw ValidationError("--precision \(precision) needs oneDNN's bfloat16 matmul, which this CPU (\(OneDNN.isa)) lacks; use f32")
        }
    }

    /// Loads the model, reporting progress on standard error.
    func load() throws -> any LanguageModel {
        try ModelRegistry.load(model, precision: precision) { modelCommandLog("kvtc: " + $0) }
    }

    /// Loads only the tokenizer (no weights are dequantized).
    func loadTokenizer() throws -> Tokenizer {
        let path: String
        if let entry = ModelRegistry.entry(named: model ?? ModelRegistry.defaultModelName) {
            path = try ModelStore().ensure(entry.source) { modelCommandLog("kvtc: " + $0) }.path
        } else {
            path = model ?? ""
        }
        return try Tokenizer(gguf: GGUFFile(path: path))
    }
}

/// Writes a line to standard error (for the model commands).
func modelCommandLog(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// Runs `body` and returns its result with the seconds it took (for the model commands).
func modelCommandTime<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = Date()
    let r = try body()
    return (r, Date().timeIntervalSince(start))
}
