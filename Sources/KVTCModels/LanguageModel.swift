import KVTCCache
import KVTCNumerics
import KVTCTokenizers

/// Which logits a forward pass returns.
public enum LogitsRequest: Sendable, Equatable {
    /// None (e.g. when only the cache is wanted).
    case none
    /// The logits after the last token only.
    case last
    /// The logits after every token.
    case all
}

/// The sizes of a model that benchmarks and limits need.
public struct ModelDimensions: Sendable, Hashable, Codable {
    /// Transformer blocks.
    public var layers: Int
    /// Width of the residual stream.
    public var embedding: Int
    /// Query heads per layer.
    public var heads: Int
    /// Key/value heads per layer.
    public var kvHeads: Int
    /// Dimension of one head.
    public var headDim: Int
    /// Tokens in the vocabulary (rows of the output projection).
    public var vocabularySize: Int
    /// Longest sequence the model was trained for (positions `0 ..< contextLength`).
    public var contextLength: Int
    /// Parameters of the blocks' matrices: what each token's matmuls multiply by (the output
    /// projection excluded).
    public var blockMatrixParameters: Int

    public init(layers: Int, embedding: Int, heads: Int, kvHeads: Int, headDim: Int,
                vocabularySize: Int, contextLength: Int, blockMatrixParameters: Int) {
        self.layers = layers
        self.embedding = embedding
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.vocabularySize = vocabularySize
        self.contextLength = contextLength
        self.blockMatrixParameters = blockMatrixParameters
    }
}

/// One of a model's linear projections: `outFeatures x inFeatures`, in every block or once.
public struct ProjectionShape: Sendable, Hashable, Codable {
    /// What it projects (`qkv`, `attention output`, `gate+up`, `down`, `logits`).
    public var name: String
    public var outFeatures: Int
    public var inFeatures: Int
    /// Whether every block has one (else the model has one: the output projection).
    public var perLayer: Bool

    public init(name: String, outFeatures: Int, inFeatures: Int, perLayer: Bool) {
        self.name = name
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.perLayer = perLayer
    }

    /// The projections of a block with stacked Q/K/V and gate/up weights (both families'),
    /// then the output projection to logits.
    public static func gatedBlock(embedding e: Int, queryWidth qd: Int, keyValueWidth kvd: Int, feedForward f: Int,
                                  vocabularySize v: Int) -> [ProjectionShape] {
        [ProjectionShape(name: "qkv", outFeatures: qd + 2 * kvd, inFeatures: e, perLayer: true),
         ProjectionShape(name: "attention output", outFeatures: e, inFeatures: qd, perLayer: true),
         ProjectionShape(name: "gate+up", outFeatures: 2 * f, inFeatures: e, perLayer: true),
         ProjectionShape(name: "down", outFeatures: e, inFeatures: f, perLayer: true),
         ProjectionShape(name: "logits", outFeatures: v, inFeatures: e, perLayer: false)]
    }
}

/// A decoder-only transformer that keeps all per-sequence state in a ``KVCache``.
///
/// This is the seam between the model families (one implementation per GGUF
/// `general.architecture`, found through ``ModelRegistry``) and everything that runs a model:
/// evaluation, calibration, the store, the serving runtime, the tools and the benchmarks.
/// An implementation provides the forward pass (``hiddenStates(tokens:cache:startPosition:rows:observer:)``)
/// and the output projection (``logits(hidden:)``); prefill, decoding, generation and
/// perplexity are built on those two for every family alike.
///
/// Weights never change after loading, so one instance may serve many threads; a cache is
/// the caller's, and a cache decoded from a compressed blob works exactly like one the model
/// produced.
public protocol LanguageModel: AnyObject, Sendable {
    /// The GGUF architecture this implementation runs (`llama`, ...).
    var architecture: String { get }
    /// Identity of the weights: the GGUF file's SHA-256 (hex) when known, else its name.
    /// Caches and profiles are bound to it.
    var identity: String { get }
    /// Path of the GGUF file the weights came from.
    var path: String { get }
    /// The sizes of the model.
    var dimensions: ModelDimensions { get }
    /// Geometry of this model's KV caches.
    var geometry: KVGeometry { get }
    /// How the model's caches hold keys: the rotation every key row carries.
    var rope: RoPE { get }
    /// Per layer: the rotation of its keys and its attention window.
    var layerAttention: [LayerAttention] { get }
    /// The model's tokenizer.
    var tokenizer: Tokenizer { get }
    /// How chat messages become prompt text for this model.
    var chatTemplate: any ChatTemplate { get }
    /// Longest run of tokens processed in one forward pass; longer inputs are processed in
    /// consecutive chunks to bound memory.
    var prefillChunk: Int { get }
    /// What the projections' weights are held in and multiplied at.
    var precision: ModelPrecision { get }
    /// The linear projections a token passes through (for per-GEMM benchmarks).
    var projections: [ProjectionShape] { get }

    /// Runs `tokens` after whatever `cache` holds, appending their keys and values to the
    /// cache, and returns the final-norm hidden states (`rows x embedding`) of the rows
    /// `rows` asks for.
    ///
    /// - Parameters:
    ///   - startPosition: position of the first new token; `nil` means one past the
    ///     cache's last position (0 for an empty cache).
    ///   - observer: if given, accumulates the attention the new tokens pay to every token.
    func hiddenStates(tokens: [Int], cache: inout KVCache, startPosition: Int?,
                      rows: LogitsRequest, observer: AttentionObserver?) throws(ModelError) -> Matrix

    /// Logits (`rows x vocabulary`) for final-norm hidden states.
    func logits(hidden: Matrix) throws(ModelError) -> Matrix

    /// Per layer, the squared norm of each column of the attention output projection
    /// (`heads * headDim` values): how strongly an error in each feature of a head's
    /// attention output reaches the residual stream.
    var attentionOutputEnergy: [[Float]] { get }
}

extension LanguageModel {
    /// Tokens that end generation: EOS and the chat template's end-of-turn tokens.
    public var stopTokens: Set<Int> {
        var s = Set<Int>()
        if let e = tokenizer.eosID { s.insert(e) }
        for t in chatTemplate.stopTokens { if let id = tokenizer.id(of: t) { s.insert(id) } }
        return s
    }

    /// The prompt tokens of a chat: the chat template's rendering (control tokens only where
    /// the template put them, message contents always text), after the BOS token when the
    /// tokenizer asks for one (Gemma's template starts with it; ChatML has none).
    public func chatPromptTokens(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> [Int] {
        tokenizer.encode(chatTemplate.prompt(messages, addGenerationPrompt: addGenerationPrompt), addBOS: tokenizer.addBOS)
    }

    /// The prompt tokens of one user turn (after `system`, or the template's default system
    /// prompt), ready for generation.
    public func chatPromptTokens(user: String, system: String? = nil) -> [Int] {
        tokenizer.encode(chatTemplate.prompt(user: user, system: system), addBOS: tokenizer.addBOS)
    }

    /// This model at `precision`: itself when it already runs at it, else the same weights
    /// (file, identity, chat template, chunking) loaded again at that precision.
    public func atPrecision(_ precision: ModelPrecision) throws(ModelError) -> any LanguageModel {
        guard self.precision != precision else { return self }
        return try ModelRegistry.load(path: path, options: ModelLoadOptions(identity: identity, chatTemplate: chatTemplate,
                                                                            prefillChunk: prefillChunk, precision: precision))
    }

    /// An empty cache for this model.
    public func makeCache(reservingCapacity capacity: Int = 0) -> KVCache {
        KVCache(geometry: geometry, rope: rope, layerAttention: layerAttention, model: identity, reservingCapacity: capacity)
    }

    /// Runs `tokens` through the model after whatever `cache` already holds, appending
    /// their keys and values to the cache.
    ///
    /// - Returns: `0`, `1` or `tokens.count` rows of logits, as `logits` asks.
    public func prefill(tokens: [Int], cache: inout KVCache, startPosition: Int? = nil,
                        logits request: LogitsRequest = .last) throws(ModelError) -> Matrix {
        let hidden = try hiddenStates(tokens: tokens, cache: &cache, startPosition: startPosition,
                                      rows: request, observer: nil)
        return try logits(hidden: hidden)
    }

    /// Feeds one token and returns the logits for the next one.
    public func decodeStep(token: Int, cache: inout KVCache) throws(ModelError) -> [Float] {
        try prefill(tokens: [token], cache: &cache, logits: .last).elements
    }

    /// Checks what every forward pass requires of its input: tokens of the vocabulary, a
    /// cache of this model's geometry and rotation, and positions inside the context.
    ///
    /// - Returns: the position of the first new token.
    public func validateForward(tokens: [Int], cache: KVCache, startPosition: Int?) throws(ModelError) -> Int {
        guard !tokens.isEmpty else { throw .emptyInput("prefill needs at least one token") }
        guard cache.geometry == geometry else {
            throw .cacheMismatch("geometry \(cache.geometry), model \(geometry)")
        }
        guard cache.rope == rope else { throw .cacheMismatch("RoPE \(cache.rope), model \(rope)") }
        guard cache.layerAttention == layerAttention else {
            throw .cacheMismatch("the cache's per-layer RoPE or attention windows differ from the model's")
        }
        let v = dimensions.vocabularySize
        for t in tokens where t < 0 || t >= v { throw .invalidToken(t) }
        let start = startPosition ?? (cache.positions.last.map { $0 + 1 } ?? 0)
        guard start >= 0, start + tokens.count <= dimensions.contextLength else {
            throw .contextOverflow(positions: start + tokens.count, limit: dimensions.contextLength)
        }
        return start
    }
}
