import KVTCNumerics

/// The OpenBLAS thread count restored after single-threaded attention kernels.
enum BLASThreads {
    static let configured: Int = max(1, BLAS.threadCount)
}

/// A linear layer's weight `W` (`outFeatures x inFeatures`) at the model's precision:
/// `y = x W^T`, a GEMV for one row and a GEMM otherwise.
struct LinearWeight: Sendable {
    let outFeatures: Int
    let inFeatures: Int
    private let storage: Storage

    private enum Storage: Sendable {
        case f32([Float])
        case bf16(BF16Weights)
    }

    /// Keeps a row-major f32 weight as is (``ModelPrecision/f32``) or converts it to packed
    /// bfloat16 (``ModelPrecision/bf16``), dropping the f32 values.
    init(_ values: [Float], outFeatures: Int, inFeatures: Int, precision: ModelPrecision) throws(ModelError) {
        precondition(values.count == outFeatures * inFeatures)
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        switch precision {
        case .f32: storage = .f32(values)
        case .bf16:
            do { storage = .bf16(try BF16Weights(values, outFeatures: outFeatures, inFeatures: inFeatures)) } catch {
                throw .backend("\(error)")
            }
        }
    }

    var precision: ModelPrecision {
        switch storage {
        case .f32: return .f32
        case .bf16: return .bf16
        }
    }

    /// Bytes the weight occupies.
    var byteCount: Int {
        switch storage {
        case .f32(let w): return 4 * w.count
        case .bf16(let w): return w.byteCount
        }
    }

    /// `y = x W^T` (`+ y` when `accumulate`) for `rows` dense rows of `x`.
    func apply(x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>, accumulate: Bool) throws(ModelError) {
        switch storage {
        case .f32(let weight):
            weight.withUnsafeBufferPointer { w in
                if rows == 1 {
                    BLAS.gemv(.normal, m: outFeatures, n: inFeatures, a: w.baseAddress!, lda: inFeatures, x: x,
                              beta: accumulate ? 1 : 0, y: y)
                } else {
                    BLAS.gemm(.normal, .transposed, m: rows, n: outFeatures, k: inFeatures,
                              a: x, lda: inFeatures, b: w.baseAddress!, ldb: inFeatures,
                              beta: accumulate ? 1 : 0, c: y, ldc: outFeatures)
                }
            }
        case .bf16(let weight):
            do { try weight.apply(x, rows: rows, into: y, accumulate: accumulate) } catch { throw .backend("\(error)") }
        }
    }

    /// `x W^T` as a new matrix (`x.rows x outFeatures`): the output projection to logits.
    func apply(_ x: Matrix) throws(ModelError) -> Matrix {
        precondition(x.columns == inFeatures)
        var out = Matrix(rows: x.rows, columns: outFeatures)
        guard x.rows > 0 else { return out }
        let result: Result<Void, ModelError> = x.elements.withUnsafeBufferPointer { h in
            out.elements.withUnsafeMutableBufferPointer { o in
                do throws(ModelError) {
                    try apply(x: h.baseAddress!, rows: x.rows, y: o.baseAddress!, accumulate: false)
                    return .success(())
                } catch { return .failure(error) }
            }
        }
        try result.get()
        return out
    }

    /// The weight as f32 values, row-major (exactly the values multiplied).
    func floats() throws(ModelError) -> [Float] {
        switch storage {
        case .f32(let w): return w
        case .bf16(let w):
            do { return try w.floats() } catch { throw .backend("\(error)") }
        }
    }

    /// Squared norm of each input column of `W`: how strongly each input feature reaches
    /// the output (the attention output projection's, for sensitivity).
    func columnEnergy() throws(ModelError) -> [Float] {
        let weight = try floats()
        var energy = [Float](repeating: 0, count: inFeatures)
        for r in 0..<outFeatures { for j in 0..<inFeatures { let x = weight[r * inFeatures + j]; energy[j] += x * x } }
        return energy
    }
}

/// The token embedding table (`vocabulary x embedding`, a row per token) at the model's
/// precision, for looking rows up; a tied output projection keeps its own ``LinearWeight``.
struct TokenEmbedding: Sendable {
    let vocabularySize: Int
    let embedding: Int
    private let storage: Storage

    private enum Storage: Sendable {
        case f32([Float])
        case bf16(BF16Matrix)
    }

    init(_ values: [Float], vocabularySize: Int, embedding: Int, precision: ModelPrecision) throws(ModelError) {
        precondition(values.count == vocabularySize * embedding)
        self.vocabularySize = vocabularySize
        self.embedding = embedding
        switch precision {
        case .f32: storage = .f32(values)
        case .bf16:
            do { storage = .bf16(try BF16Matrix(values, rows: vocabularySize, columns: embedding)) } catch {
                throw .backend("\(error)")
            }
        }
    }

    var byteCount: Int {
        switch storage {
        case .f32(let w): return 4 * w.count
        case .bf16(let w): return w.byteCount
        }
    }

    /// Writes the rows of `tokens`, each multiplied by `scale`, to consecutive rows of `out`.
    func lookUp<C: Collection<Int>>(_ tokens: C, scale: Float = 1, into out: UnsafeMutablePointer<Float>) {
        let e = embedding
        switch storage {
        case .f32(let table):
            table.withUnsafeBufferPointer { t in
                for (r, token) in tokens.enumerated() {
                    let src = t.baseAddress! + token * e, dst = out + r * e
                    if scale == 1 { dst.update(from: src, count: e) } else { for i in 0..<e { dst[i] = src[i] * scale } }
                }
            }
        case .bf16(let table):
            for (r, token) in tokens.enumerated() { table.copyRow(token, scale: scale, into: out + r * e) }
        }
    }
}

/// The gated feed-forward block both families use: `y (=|+=) down(act(gate(h)) * up(h))`,
/// with the gate and up projections stacked in one weight.
enum GatedFeedForward {
    /// The gate's activation: SiLU (Llama's SwiGLU) or tanh-approximated GELU (Gemma's GEGLU).
    enum Activation { case silu, gelu }

    /// Runs the block on `rows` normalized rows `h`; `gateUp` (`rows x 2f`) and `activated`
    /// (`rows x f`) are scratch.
    static func apply(_ h: UnsafePointer<Float>, rows n: Int, gateUp: LinearWeight, down: LinearWeight,
                      activation: Activation, gateUpScratch: UnsafeMutablePointer<Float>,
                      activatedScratch: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>,
                      accumulate: Bool) throws(ModelError) {
        let f = down.inFeatures
        try gateUp.apply(x: h, rows: n, y: gateUpScratch, accumulate: false)
        let gu = UncheckedSendable(gateUpScratch), act = UncheckedSendable(activatedScratch)
        Parallel.forEachRange(n, minimumPerTask: 32) { range in
            for r in range {
                let gate = gu.value + r * 2 * f, out = act.value + r * f
                switch activation {
                case .silu: FastMath.swiglu(gate: gate, up: gate + f, out: out, count: f)
                case .gelu: FastMath.geglu(gate: gate, up: gate + f, out: out, count: f)
                }
            }
        }
        try down.apply(x: activatedScratch, rows: n, y: y, accumulate: accumulate)
    }
}
