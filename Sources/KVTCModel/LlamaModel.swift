import Foundation
import KVTCCache
import KVTCNumerics

/// Which logits a forward pass returns.
public enum LogitsRequest: Sendable, Equatable {
    /// None (e.g. when only the cache is wanted).
    case none
    /// The logits after the last token only.
    case last
    /// The logits after every token.
    case all
}

/// A llama-architecture language model running on the CPU in single precision.
///
/// Weights are dequantized from GGUF at load and never change, so one instance may serve
/// many threads. All per-sequence state lives in the caller's ``KVCache``: the model reads
/// keys and values from it and appends the new tokens' rows, so a cache decoded from a
/// compressed blob works exactly like one the model produced.
///
/// Threads: GEMMs use OpenBLAS's own threads; attention runs (query head, query block)
/// tasks on ``Parallel`` with OpenBLAS switched to one thread for the duration, then
/// restores the thread count OpenBLAS had when the first model was loaded. Running two
/// forward passes at once is safe but may briefly leave BLAS single-threaded for the other.
public final class LlamaModel: Sendable {
    /// Hyperparameters.
    public let config: LlamaConfig
    /// Geometry of this model's KV caches.
    public let geometry: KVGeometry
    /// How this model rotates keys (interleaved pairs, as GGUF llama weights expect).
    public let rope: RoPE
    /// The model's tokenizer.
    public let tokenizer: Tokenizer
    /// Identity of the weights: the GGUF file's SHA-256 (hex) when known, else its name.
    public let identity: String
    /// Path of the GGUF file the weights came from.
    public let path: String
    /// Longest run of tokens processed in one pass of ``prefill(tokens:cache:startPosition:logits:)``;
    /// longer inputs are processed in consecutive chunks to bound memory.
    public let prefillChunk: Int

    let weights: LlamaWeights

    /// Loads a llama GGUF file, dequantizing every weight to f32.
    ///
    /// - Parameters:
    ///   - path: the GGUF file.
    ///   - identity: a stable identity for the weights (e.g. the file's SHA-256); defaults
    ///     to the file name.
    ///   - prefillChunk: the longest run of tokens per forward pass (default 1024).
    public init(path: String, identity: String? = nil, prefillChunk: Int = 1024) throws(ModelError) {
        let gguf: GGUFFile
        do { gguf = try GGUFFile(path: path) } catch { throw .gguf(error) }
        let config = try LlamaConfig(gguf: gguf)
        self.config = config
        do { tokenizer = try Tokenizer(gguf: gguf) } catch { throw .tokenizer(error) }
        guard tokenizer.vocabularySize == config.vocabularySize else {
            throw .badConfig("tokenizer has \(tokenizer.vocabularySize) tokens, embedding \(config.vocabularySize) rows")
        }
        geometry = KVGeometry(layers: config.layers, kvHeads: config.kvHeads, headDim: config.headDim)
        rope = RoPE(layout: .interleaved, theta: config.ropeTheta, rotaryDims: config.rotaryDims)
        self.identity = identity ?? URL(fileURLWithPath: path).lastPathComponent
        self.path = path
        self.prefillChunk = max(1, prefillChunk)
        _ = BLASThreads.configured
        weights = try LlamaWeights(gguf: gguf, config: config)
    }

    /// An empty cache for this model.
    public func makeCache(reservingCapacity capacity: Int = 0) -> KVCache {
        KVCache(geometry: geometry, rope: rope, model: identity, reservingCapacity: capacity)
    }

    /// Runs `tokens` through the model after whatever `cache` already holds, appending
    /// their keys and values to the cache.
    ///
    /// - Parameters:
    ///   - tokens: token ids; at least one.
    ///   - cache: a cache with this model's geometry and RoPE (from any source).
    ///   - startPosition: position of the first new token; defaults to one past the cache's
    ///     last position (0 for an empty cache).
    ///   - logits: which logits to return.
    /// - Returns: `0`, `1` or `tokens.count` rows of ``LlamaConfig/vocabularySize`` logits.
    public func prefill(tokens: [Int], cache: inout KVCache, startPosition: Int? = nil,
                        logits: LogitsRequest = .last) throws(ModelError) -> Matrix {
        let hidden = try hiddenStates(tokens: tokens, cache: &cache, startPosition: startPosition,
                                      rows: logits)
        return self.logits(hidden: hidden)
    }

    /// Feeds one token and returns the logits for the next one.
    public func decodeStep(token: Int, cache: inout KVCache) throws(ModelError) -> [Float] {
        try prefill(tokens: [token], cache: &cache, logits: .last).elements
    }

    /// Final-norm hidden states (`rows x embedding`) for the requested rows.
    func hiddenStates(tokens: [Int], cache: inout KVCache, startPosition: Int?,
                      rows: LogitsRequest, observer: AttentionObserver? = nil) throws(ModelError) -> Matrix {
        guard !tokens.isEmpty else { throw .emptyInput("prefill needs at least one token") }
        guard cache.geometry == geometry else {
            throw .cacheMismatch("geometry \(cache.geometry), model \(geometry)")
        }
        guard cache.rope == rope else { throw .cacheMismatch("RoPE \(cache.rope), model \(rope)") }
        for t in tokens where t < 0 || t >= config.vocabularySize { throw .invalidToken(t) }
        let start = startPosition ?? (cache.positions.last.map { $0 + 1 } ?? 0)
        guard start >= 0, start + tokens.count <= config.contextLength else {
            throw .contextOverflow(positions: start + tokens.count, limit: config.contextLength)
        }
        let e = config.embedding
        var out = Matrix(rows: rows == .all ? tokens.count : (rows == .last ? 1 : 0), columns: e)
        var done = 0
        while done < tokens.count {
            let n = min(prefillChunk, tokens.count - done)
            let positions = Array((start + done)..<(start + done + n))
            let x = forward(tokens: tokens[done..<(done + n)], positions: positions, cache: &cache, observer: observer)
            x.withUnsafeBufferPointer { xb in
                out.elements.withUnsafeMutableBufferPointer { ob in
                    let (src, dst, count): (Int, Int, Int)
                    switch rows {
                    case .none: return
                    case .all: (src, dst, count) = (0, done, n)
                    case .last:
                        guard done + n == tokens.count else { return }
                        (src, dst, count) = (n - 1, 0, 1)
                    }
                    weights.outputNorm.withUnsafeBufferPointer { w in
                        for r in 0..<count {
                            FastMath.rmsNorm(xb.baseAddress! + (src + r) * e, weight: w.baseAddress!,
                                             eps: config.rmsEpsilon, out: ob.baseAddress! + (dst + r) * e, count: e)
                        }
                    }
                }
            }
            done += n
        }
        return out
    }

    /// Logits (`rows x vocabulary`) for final-norm hidden states.
    func logits(hidden: Matrix) -> Matrix {
        let v = config.vocabularySize, e = config.embedding
        var out = Matrix(rows: hidden.rows, columns: v)
        guard hidden.rows > 0 else { return out }
        hidden.elements.withUnsafeBufferPointer { h in
            weights.output.withUnsafeBufferPointer { w in
                out.elements.withUnsafeMutableBufferPointer { o in
                    Linear.apply(x: h.baseAddress!, rows: hidden.rows, weight: w.baseAddress!,
                                 outFeatures: v, inFeatures: e, y: o.baseAddress!, accumulate: false)
                }
            }
        }
        return out
    }
}

/// The OpenBLAS thread count the model restores after single-threaded attention kernels.
enum BLASThreads {
    static let configured: Int = max(1, BLAS.threadCount)
}

/// `y = x * W^T (+ y)` with `W` row-major `[out x in]`: GEMV for one row, GEMM otherwise.
enum Linear {
    @inline(__always)
    static func apply(x: UnsafePointer<Float>, rows: Int, weight: UnsafePointer<Float>,
                      outFeatures: Int, inFeatures: Int, y: UnsafeMutablePointer<Float>,
                      accumulate: Bool) {
        if rows == 1 {
            BLAS.gemv(.normal, m: outFeatures, n: inFeatures, a: weight, lda: inFeatures, x: x,
                      beta: accumulate ? 1 : 0, y: y)
        } else {
            BLAS.gemm(.normal, .transposed, m: rows, n: outFeatures, k: inFeatures,
                      a: x, lda: inFeatures, b: weight, ldb: inFeatures,
                      beta: accumulate ? 1 : 0, c: y, ldc: outFeatures)
        }
    }
}
