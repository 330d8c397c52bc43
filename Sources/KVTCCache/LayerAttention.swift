import KVTCNumerics

/// What a KV codec must know about one layer's attention: how its keys are rotated and how
/// far back its queries can see.
public struct LayerAttention: Sendable, Hashable, Codable {
    /// The rotation of this layer's keys (layout, base and rotated dimensions).
    public var rope: RoPE
    /// The most recent tokens a query of this layer attends to (itself included), or `nil`
    /// when it attends to the whole context (a global layer).
    public var window: Int?

    public init(rope: RoPE, window: Int? = nil) {
        self.rope = rope
        self.window = window
    }
}

extension LayerAttention {
    /// `layers` layers that all rotate keys with `rope` and see the whole context.
    public static func uniform(_ rope: RoPE, layers: Int) -> [LayerAttention] {
        Array(repeating: LayerAttention(rope: rope), count: layers)
    }

    /// Whether every layer of `layers` rotates its keys with `rope` and attends to the
    /// whole context: the uniform case, which formats of version 1 describe with one RoPE.
    public static func areUniform(_ layers: [LayerAttention], rope: RoPE) -> Bool {
        layers.allSatisfy { $0.rope == rope && $0.window == nil }
    }
}

/// The rotation of a cache's key rows, layer by layer: what removes positions from keys
/// before the codec's PCA and puts them back after, for caches whose layers share one RoPE
/// (Llama) and for those whose layers differ (Gemma 3's local and global layers).
public struct KeyRotation: Sendable {
    /// The cache's shape.
    public let geometry: KVGeometry
    /// Per layer, its rotation.
    public let layers: [RoPE]

    public init(geometry: KVGeometry, layers: [LayerAttention]) {
        precondition(layers.count == geometry.layers, "one LayerAttention per layer")
        self.geometry = geometry
        self.layers = layers.map(\.rope)
    }

    /// Rotates, in place, the features `columns` (whole heads) of `positions.count` rows
    /// `stride` floats apart, each layer's heads by that layer's RoPE at the row's position:
    /// by `+angle`, as a model does, or by `-angle` (`inverse`), which removes the position.
    public func rotate(rows: UnsafeMutablePointer<Float>, stride: Int, columns: Range<Int>, positions: [Int], inverse: Bool) {
        let f = geometry.featuresPerLayer, d = geometry.headDim
        precondition(columns.lowerBound % d == 0 && columns.count % d == 0, "rotation of part of a head")
        guard !columns.isEmpty, !positions.isEmpty else { return }
        var tables: [RoPE: RoPE.Table] = [:]
        var c = columns.lowerBound
        while c < columns.upperBound {
            // The run of columns up to the next layer whose rotation differs.
            let rope = layers[c / f]
            var end = min(columns.upperBound, (c / f + 1) * f)
            while end < columns.upperBound, layers[end / f] == rope { end = min(columns.upperBound, (end / f + 1) * f) }
            if rope.layout != .none {
                let table = tables[rope] ?? rope.table(positions: positions)
                tables[rope] = table
                rope.rotate(rows: rows + (c - columns.lowerBound), rowStride: stride, heads: (end - c) / d, headDim: d,
                            table: table, inverse: inverse)
            }
            c = end
        }
    }
}


extension KVCache {
    /// Per layer, the first position a query after the cache's last token can read: for a
    /// sliding layer with window `W`, `P + 2 - W` after a last position `P` (the next query,
    /// at `P + 1`, sees `W` positions ending at its own); `Int.min` for a full-context layer.
    /// A sliding layer's rows before its reach are never read again.
    public var laterQueryReach: [Int] {
        let next = (positions.last ?? -1) + 1
        return layerAttention.map { $0.window.map { next + 1 - $0 } ?? Int.min }
    }
}
