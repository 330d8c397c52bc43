import KVTCNumerics

/// The shape of one model's KV cache: layers x kv heads x head dimension per token.
public struct KVGeometry: Hashable, Codable, Sendable, CustomStringConvertible {
    /// Transformer layers.
    public var layers: Int
    /// Key/value heads per layer (after grouped-query sharing).
    public var kvHeads: Int
    /// Dimension of one head.
    public var headDim: Int

    public init(layers: Int, kvHeads: Int, headDim: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
    }

    /// Features per token in one stream (keys or values): `layers * kvHeads * headDim`.
    public var featuresPerToken: Int { layers * kvHeads * headDim }
    /// Features of one layer: `kvHeads * headDim`.
    public var featuresPerLayer: Int { kvHeads * headDim }

    public var description: String { "\(layers) layers x \(kvHeads) kv heads x \(headDim)" }
}

/// Errors about a cache's contents or shape.
public enum KVCacheError: Error, Equatable, CustomStringConvertible {
    /// A stream does not hold `tokens * featuresPerToken` values.
    case wrongElementCount(stream: String, expected: Int, actual: Int)
    /// The positions array does not have one entry per token.
    case wrongPositionCount(expected: Int, actual: Int)
    /// A value is NaN or infinite.
    case nonFinite(stream: String, token: Int)
    /// Geometry with a zero or negative extent, or an odd head dimension with RoPE.
    case invalidGeometry(String)
    /// Two caches that must agree do not.
    case mismatch(String)
    /// A token range outside the cache.
    case tokenRange(Range<Int>, count: Int)

    public var description: String {
        switch self {
        case .wrongElementCount(let s, let e, let a): return "\(s) hold \(a) values, expected \(e)"
        case .wrongPositionCount(let e, let a): return "\(a) positions for \(e) tokens"
        case .nonFinite(let s, let t): return "\(s) of token \(t) contain NaN or infinite values"
        case .invalidGeometry(let m): return "invalid cache geometry: \(m)"
        case .mismatch(let m): return "caches do not match: \(m)"
        case .tokenRange(let r, let c): return "token range \(r) outside a cache of \(c) tokens"
        }
    }
}

/// The key-value cache of one sequence, in single precision, token-major.
///
/// Each stream (``keys`` and ``values``) holds one row per token; a row concatenates every
/// layer and every kv head: element `[t, l, h, i]` is at `t * p + (l * H + h) * d + i` where
/// `p = L * H * d`. Keys are stored as the model holds them, i.e. rotated by RoPE at their
/// ``positions``. This is the layout KVTC's feature rows use, and attention for layer `l`,
/// head `h` reads it as a `tokens x d` matrix with row stride `p`.
public struct KVCache: Sendable, Equatable {
    /// The cache's shape per token.
    public let geometry: KVGeometry
    /// How keys are rotated: for a cache whose layers differ, the rotation of its global
    /// (full-context) layers; ``layerAttention`` has every layer's.
    public let rope: RoPE
    /// Per layer, the rotation of its keys and the window of its queries.
    public let layerAttention: [LayerAttention]
    /// Whether every layer rotates its keys with ``rope`` and sees the whole context.
    public var isUniform: Bool { LayerAttention.areUniform(layerAttention, rope: rope) }
    /// The rotation of this cache's key rows, layer by layer.
    public var keyRotation: KeyRotation { KeyRotation(geometry: geometry, layers: layerAttention) }
    /// Absolute position of every token.
    public private(set) var positions: [Int]
    /// Keys, `tokenCount x geometry.featuresPerToken`, rotated.
    public private(set) var keys: [Float]
    /// Values, `tokenCount x geometry.featuresPerToken`.
    public private(set) var values: [Float]
    /// Free-text identity of the model that produced the cache.
    public var model: String

    /// Number of tokens held.
    public var tokenCount: Int { positions.count }

    /// Creates a cache, checking shapes. Finite values are checked by ``validateFinite(tokens:)``.
    public init(geometry: KVGeometry, rope: RoPE, positions: [Int], keys: [Float], values: [Float],
                model: String = "") throws(KVCacheError) {
        try self.init(geometry: geometry, rope: rope, layerAttention: nil, positions: positions, keys: keys,
                      values: values, model: model)
    }

    /// Creates a cache whose layers may differ in rotation and window (`layerAttention`, one
    /// per layer; `nil` means every layer uses `rope` over the whole context).
    public init(geometry: KVGeometry, rope: RoPE, layerAttention: [LayerAttention]?, positions: [Int],
                keys: [Float], values: [Float], model: String = "") throws(KVCacheError) {
        guard geometry.layers > 0, geometry.kvHeads > 0, geometry.headDim > 0 else {
            throw .invalidGeometry("\(geometry)")
        }
        try rope.validate(headDim: geometry.headDim)
        let layers = layerAttention ?? LayerAttention.uniform(rope, layers: geometry.layers)
        guard layers.count == geometry.layers else {
            throw .invalidGeometry("\(layers.count) layers of attention facts for \(geometry.layers) layers")
        }
        for l in layers {
            try l.rope.validate(headDim: geometry.headDim)
            if let w = l.window, w < 1 { throw .invalidGeometry("attention window \(w)") }
        }
        let p = geometry.featuresPerToken
        guard keys.count == positions.count * p else {
            throw .wrongElementCount(stream: "keys", expected: positions.count * p, actual: keys.count)
        }
        guard values.count == positions.count * p else {
            throw .wrongElementCount(stream: "values", expected: positions.count * p, actual: values.count)
        }
        self.geometry = geometry
        self.rope = rope
        self.layerAttention = layers
        self.positions = positions
        self.keys = keys
        self.values = values
        self.model = model
    }

    /// An empty cache with room reserved for `capacity` tokens.
    public init(geometry: KVGeometry, rope: RoPE, model: String = "", reservingCapacity capacity: Int = 0) {
        self.init(geometry: geometry, rope: rope, layerAttention: nil, model: model, reservingCapacity: capacity)
    }

    /// An empty cache whose layers may differ in rotation and window (`nil`: uniform).
    /// The caller vouches for `layerAttention` (a model's own facts); it must hold one
    /// entry per layer.
    public init(geometry: KVGeometry, rope: RoPE, layerAttention: [LayerAttention]?, model: String = "",
                reservingCapacity capacity: Int = 0) {
        precondition(layerAttention == nil || layerAttention!.count == geometry.layers,
                     "one LayerAttention per layer")
        self.geometry = geometry
        self.rope = rope
        self.layerAttention = layerAttention ?? LayerAttention.uniform(rope, layers: geometry.layers)
        self.positions = []
        self.keys = []
        self.values = []
        self.model = model
        positions.reserveCapacity(capacity)
        keys.reserveCapacity(capacity * geometry.featuresPerToken)
        values.reserveCapacity(capacity * geometry.featuresPerToken)
    }

    /// Reserves room for `capacity` tokens in total, so appending up to that many tokens
    /// (a restore followed by a prefill, say) never reallocates and copies the streams.
    public mutating func reserveCapacity(tokens capacity: Int) {
        guard capacity > tokenCount else { return }
        positions.reserveCapacity(capacity)
        keys.reserveCapacity(capacity * geometry.featuresPerToken)
        values.reserveCapacity(capacity * geometry.featuresPerToken)
    }

    /// Throws if any key or value of the tokens in `range` (default: all) is NaN or infinite.
    public func validateFinite(tokens range: Range<Int>? = nil) throws(KVCacheError) {
        let p = geometry.featuresPerToken
        let r = range ?? 0..<tokenCount
        guard r.lowerBound >= 0, r.upperBound <= tokenCount else { throw .tokenRange(r, count: tokenCount) }
        for (name, stream) in [("keys", keys), ("values", values)] {
            // Token blocks on both cores (a restore checks every row it decoded); the first
            // bad token of the lowest block that has one is reported.
            let block = 64
            let blocks = (r.count + block - 1) / block
            guard blocks > 0 else { continue }
            let firstBad = Locked(Int.max)
            stream.withUnsafeBufferPointer { b in
                let base = UncheckedSendable(b.baseAddress!)
                Parallel.forEachRange(blocks) { range in
                    for k in range {
                        let lo = r.lowerBound + k * block, hi = min(r.upperBound, lo + block)
                        var i = lo * p
                        while i < hi * p, base.value[i].isFinite { i += 1 }
                        if i < hi * p {
                            let t = i / p
                            firstBad.withLock { $0 = Swift.min($0, t) }
                            return
                        }
                    }
                }
            }
            if firstBad.current != Int.max { throw .nonFinite(stream: name, token: firstBad.current) }
        }
    }

    /// The tokens in `range` as a cache of their own.
    public func tokens(_ range: Range<Int>) throws(KVCacheError) -> KVCache {
        guard range.lowerBound >= 0, range.upperBound <= tokenCount else {
            throw .tokenRange(range, count: tokenCount)
        }
        let p = geometry.featuresPerToken
        return try KVCache(geometry: geometry, rope: rope, layerAttention: layerAttention, positions: Array(positions[range]),
                           keys: Array(keys[(range.lowerBound * p)..<(range.upperBound * p)]),
                           values: Array(values[(range.lowerBound * p)..<(range.upperBound * p)]),
                           model: model)
    }

    /// Appends every token of `other`, which must have the same geometry and RoPE.
    public mutating func append(contentsOf other: KVCache) throws(KVCacheError) {
        guard other.geometry == geometry else {
            throw .mismatch("geometry \(other.geometry) vs \(geometry)")
        }
        guard other.rope == rope, other.layerAttention == layerAttention else { throw .mismatch("RoPE settings differ") }
        positions.append(contentsOf: other.positions)
        keys.append(contentsOf: other.keys)
        values.append(contentsOf: other.values)
    }

    /// Appends one token's rows (each `featuresPerToken` long) at `position`.
    public mutating func appendToken(position: Int, keyRow: UnsafeBufferPointer<Float>,
                                     valueRow: UnsafeBufferPointer<Float>) {
        precondition(keyRow.count == geometry.featuresPerToken && valueRow.count == geometry.featuresPerToken)
        positions.append(position)
        keys.append(contentsOf: keyRow)
        values.append(contentsOf: valueRow)
    }

    /// Appends `count` tokens with zeroed rows at `positions`, returning the first new index.
    /// Producers (such as a model's prefill) then fill the rows through ``withMutableStreams(_:)``.
    public mutating func appendZeroedTokens(positions newPositions: [Int]) -> Int {
        let first = tokenCount
        positions.append(contentsOf: newPositions)
        let n = newPositions.count * geometry.featuresPerToken
        keys.append(contentsOf: repeatElement(0, count: n))
        values.append(contentsOf: repeatElement(0, count: n))
        return first
    }

    /// Removes every token; with `keepingCapacity` the storage stays allocated (and paged in)
    /// for the next sequence.
    public mutating func removeAll(keepingCapacity: Bool = false) {
        positions.removeAll(keepingCapacity: keepingCapacity)
        keys.removeAll(keepingCapacity: keepingCapacity)
        values.removeAll(keepingCapacity: keepingCapacity)
    }

    /// Removes every token from `index` on.
    public mutating func truncate(to count: Int) {
        guard count < tokenCount else { return }
        let p = geometry.featuresPerToken
        positions.removeSubrange(count...)
        keys.removeSubrange((count * p)...)
        values.removeSubrange((count * p)...)
    }

    /// Mutable access to both streams at once (row-major, `tokenCount x featuresPerToken`).
    public mutating func withMutableStreams<R>(
        _ body: (_ keys: UnsafeMutableBufferPointer<Float>, _ values: UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        try keys.withUnsafeMutableBufferPointer { k in
            try values.withUnsafeMutableBufferPointer { v in try body(k, v) }
        }
    }

    /// Replaces the streams wholesale (same token count).
    public mutating func replaceStreams(keys newKeys: [Float], values newValues: [Float]) throws(KVCacheError) {
        let n = tokenCount * geometry.featuresPerToken
        guard newKeys.count == n else { throw .wrongElementCount(stream: "keys", expected: n, actual: newKeys.count) }
        guard newValues.count == n else { throw .wrongElementCount(stream: "values", expected: n, actual: newValues.count) }
        keys = newKeys
        values = newValues
    }

    /// Size in bytes of this cache stored as fp16 (keys and values, no metadata).
    public var fp16Bytes: Int { 2 * 2 * tokenCount * geometry.featuresPerToken }

    /// Index of the first token whose position is not the first token's position plus its
    /// index, or `nil` when the positions run consecutively (as one unbroken sequence's do),
    /// so formats can store the first position alone.
    public var firstNonConsecutivePosition: Int? {
        guard let first = positions.first else { return nil }
        return positions.indices.first { positions[$0] != first + $0 }
    }
}
