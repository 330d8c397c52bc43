import KVTCCache
import KVTCGGUF
import KVTCNumerics

/// Conversions between a llama.cpp sequence state and a ``KVCache``.
///
/// The state carries no geometry or RoPE: they come from the model (its GGUF). llama.cpp
/// holds keys rotated, as kvtc does, with the pairing its architecture uses (llama-family
/// GGUF weights: interleaved pairs), so the rows move over unchanged.
extension LlamaSequenceState {
    /// The one stream holding cells.
    public func occupiedStream() throws(LlamaStateError) -> Int {
        let occupied = streams.indices.filter { !streams[$0].cells.isEmpty }
        guard occupied.count == 1 else { throw .mismatch("\(occupied.count) streams hold cells; a sequence state has exactly one") }
        return occupied[0]
    }

    /// Values per cell of a row of `type` taking `bytes`.
    static func width(_ type: GGMLType, bytes: Int) -> Int { bytes / type.blockBytes * type.blockSize }

    /// The attention rotation llama.cpp applied to this state's K/V (quantized types only).
    public func attentionRotation(headDim: Int) throws(LlamaStateError) -> AttentionRotation {
        guard let layer = streams[try occupiedStream()].layers.first else { return .none }
        return .llamaCpp(headDim: headDim, keyType: layer.keyType, valueType: layer.valueType)
    }

    /// The cache the state holds, for a model of `geometry` rotating keys with `rope`
    /// (undoing llama.cpp's rotation of quantized K/V).
    public func cache(geometry: KVGeometry, rope: RoPE, model: String = "") throws(LlamaStateError) -> KVCache {
        try cache(geometry: geometry, rope: rope, layerAttention: nil, model: model)
    }

    /// The layers each block of the state holds: every layer for a state of one cache; the
    /// full-context layers (first block) and the sliding-window layers (second block) of a
    /// model with both.
    static func blockLayers(_ layerAttention: [LayerAttention]?, layers: Int, windowed: Bool) throws(LlamaStateError) -> ([Int], [Int]) {
        guard windowed else { return (Array(0..<layers), []) }
        guard let layerAttention, layerAttention.count == layers else {
            throw .mismatch("the state holds a sliding-window cache; the model's layers must say which layers slide")
        }
        return (layerAttention.indices.filter { layerAttention[$0].window == nil }, layerAttention.indices.filter { layerAttention[$0].window != nil })
    }

    /// The cache the state holds for a model whose layers attend as `layerAttention` says
    /// (`nil`: every layer the same, with `rope`). The rows of a sliding layer that its
    /// window no longer sees (absent from the state's second cache) are zeros, as kvtc's
    /// codec leaves them.
    public func cache(geometry: KVGeometry, rope: RoPE, layerAttention: [LayerAttention]?,
                      model: String = "") throws(LlamaStateError) -> KVCache {
        let stream = streams[try occupiedStream()]
        let (full, sliding) = try Self.blockLayers(layerAttention, layers: geometry.layers, windowed: windowStreams != nil)
        let n = stream.cells.count, p = geometry.featuresPerToken
        var keys = [Float](repeating: 0, count: n * p), values = [Float](repeating: 0, count: n * p)
        try Self.read(stream, layers: full, rows: Array(0..<n), geometry: geometry, keys: &keys, values: &values)
        if let window = windowStreams {
            let occupied = window.indices.filter { !window[$0].cells.isEmpty }
            guard occupied.count <= 1 else { throw .mismatch("\(occupied.count) sliding-window streams hold cells") }
            if let w = occupied.first {
                var row: [Int32: Int] = [:]
                for (i, c) in stream.cells.enumerated() { row[c.position] = i }
                let rows = try window[w].cells.map { c throws(LlamaStateError) -> Int in
                    guard let r = row[c.position] else { throw .mismatch("the sliding-window cache holds position \(c.position), the full cache does not") }
                    return r
                }
                try Self.read(window[w], layers: sliding, rows: rows, geometry: geometry, keys: &keys, values: &values)
            }
        }
        do {
            let cache = try KVCache(geometry: geometry, rope: rope, layerAttention: layerAttention,
                                    positions: stream.cells.map { Int($0.position) }, keys: keys, values: values, model: model)
            try cache.validateFinite()
            return cache
        } catch {
            throw .malformed(error.description)
        }
    }

    /// Copies the K/V of `stream` (whose layer `i` is the model's layer `layers[i]` and whose
    /// cell `c` is the cache's row `rows[c]`) into token-major `keys` and `values`.
    static func read(_ stream: LlamaStateStream, layers: [Int], rows: [Int], geometry: KVGeometry,
                     keys: inout [Float], values: inout [Float]) throws(LlamaStateError) {
        let n = stream.cells.count, w = geometry.featuresPerLayer, p = geometry.featuresPerToken
        guard stream.layers.count == layers.count else { throw .mismatch("\(stream.layers.count) layers, the model has \(layers.count) of this cache") }
        guard let first = stream.layers.first else { return }
        let rotation = AttentionRotation.llamaCpp(headDim: geometry.headDim, keyType: first.keyType, valueType: first.valueType)
        for (index, layer) in stream.layers.enumerated() {
            let l = layers[index]
            guard Self.width(layer.keyType, bytes: layer.keyRowBytes) == w else {
                throw .mismatch("layer \(l) K rows hold \(Self.width(layer.keyType, bytes: layer.keyRowBytes)) values, the model \(w)")
            }
            var k = layer.keys.withUnsafeBytes { Dequantize.floats($0, type: layer.keyType, count: n * w) }
            if let b = rotation.keyBlock { AttentionRotation.apply(&k, block: b) }
            for i in 0..<n { for j in 0..<w { keys[rows[i] * p + l * w + j] = k[i * w + j] } }
            if stream.valuesTransposed {
                guard layer.valueWidth == w else { throw .mismatch("layer \(l) V holds \(layer.valueWidth ?? 0) values per cell, the model \(w)") }
                if let b = rotation.valueBlock {
                    // Transposed V of a quantized type does not occur (llama.cpp needs flash attention for it).
                    throw .malformed("transposed V of quantized type \(layer.valueType) with a \(b)-value rotation")
                }
                let v = layer.values.withUnsafeBytes { Dequantize.floats($0, type: layer.valueType, count: n * w) }
                for j in 0..<w { for i in 0..<n { values[rows[i] * p + l * w + j] = v[j * n + i] } }
            } else {
                guard Self.width(layer.valueType, bytes: layer.valueRowBytes) == w else {
                    throw .mismatch("layer \(l) V rows hold \(Self.width(layer.valueType, bytes: layer.valueRowBytes)) values, the model \(w)")
                }
                var v = layer.values.withUnsafeBytes { Dequantize.floats($0, type: layer.valueType, count: n * w) }
                if let b = rotation.valueBlock { AttentionRotation.apply(&v, block: b) }
                for i in 0..<n { for j in 0..<w { values[rows[i] * p + l * w + j] = v[i * w + j] } }
            }
        }
    }

    /// The same state with its K and V replaced by `cache`'s, written in the state's own
    /// types and layout (cells, positions, token ids and `v_trans` unchanged; a second,
    /// sliding-window cache takes its cells' rows of the sliding layers).
    public func replacingRows(with cache: KVCache) throws(LlamaStateError) -> LlamaSequenceState {
        let encode = try layerEncoder(for: cache)
        var out = self
        for s in out.streams.indices where !out.streams[s].cells.isEmpty {
            for l in out.streams[s].layers.indices {
                out.streams[s].layers[l].keys = encode(0, s, l, false)
                out.streams[s].layers[l].values = encode(0, s, l, true)
            }
        }
        if let window = out.windowStreams {
            for s in window.indices where !window[s].cells.isEmpty {
                for l in window[s].layers.indices {
                    out.windowStreams![s].layers[l].keys = encode(1, s, l, false)
                    out.windowStreams![s].layers[l].values = encode(1, s, l, true)
                }
            }
        }
        return out
    }

    /// Encodes one layer's K or V of `cache` in this state's types and layout, on demand:
    /// the checks (cells, positions, layers) are made once, here.
    func layerEncoder(for cache: KVCache) throws(LlamaStateError) -> LayerBytes {
        let s = try occupiedStream()
        let g = cache.geometry
        let n = streams[s].cells.count
        guard cache.tokenCount == n else { throw .mismatch("the cache holds \(cache.tokenCount) tokens, the state \(n) cells") }
        for (i, c) in streams[s].cells.enumerated() where Int(c.position) != cache.positions[i] {
            throw .mismatch("cell \(i) is at position \(c.position), the cache's token at \(cache.positions[i])")
        }
        let (full, sliding) = try Self.blockLayers(cache.layerAttention, layers: g.layers, windowed: windowStreams != nil)
        guard streams[s].layers.count == full.count else { throw .mismatch("\(streams[s].layers.count) layers, the cache has \(full.count) of this kind") }
        var windowRows: [Int: [Int]] = [:]
        if let window = windowStreams {
            var row: [Int32: Int] = [:]
            for (i, c) in streams[s].cells.enumerated() { row[c.position] = i }
            for w in window.indices where !window[w].cells.isEmpty {
                guard window[w].layers.count == sliding.count else { throw .mismatch("\(window[w].layers.count) sliding layers, the cache has \(sliding.count)") }
                windowRows[w] = try window[w].cells.map { c throws(LlamaStateError) -> Int in
                    guard let r = row[c.position] else { throw .mismatch("the sliding-window cache holds position \(c.position), the full cache does not") }
                    return r
                }
            }
        }
        let streams = self.streams, windowStreams = self.windowStreams
        return { block, stream, layer, values in
            let st = block == 0 ? streams[stream] : windowStreams![stream]
            let rows = block == 0 ? Array(0..<n) : windowRows[stream]!
            return Self.encode(st, layer: layer, modelLayer: block == 0 ? full[layer] : sliding[layer], rows: rows, cache: cache, values: values)
        }
    }

    /// The K (or V) bytes of `stream`'s layer `layer`, the model's layer `modelLayer`, from
    /// `cache`'s rows `rows`, in the stream's type, V layout and llama.cpp's rotation.
    static func encode(_ stream: LlamaStateStream, layer: Int, modelLayer l: Int, rows: [Int], cache: KVCache, values: Bool) -> [UInt8] {
        let g = cache.geometry, n = rows.count, w = g.featuresPerLayer, p = g.featuresPerToken
        let target = stream.layers[layer]
        let rotation = AttentionRotation.llamaCpp(headDim: g.headDim, keyType: target.keyType, valueType: target.valueType)
        let transposed = values && stream.valuesTransposed
        var x = [Float](repeating: 0, count: n * w)
        (values ? cache.values : cache.keys).withUnsafeBufferPointer { source in
            x.withUnsafeMutableBufferPointer { x in
                for i in 0..<n {
                    let row = rows[i] * p + l * w
                    if transposed {
                        for j in 0..<w { x[j * n + i] = source[row + j] }
                    } else {
                        for j in 0..<w { x[i * w + j] = source[row + j] }
                    }
                }
            }
        }
        if let b = values ? rotation.valueBlock : rotation.keyBlock, !transposed { AttentionRotation.apply(&x, block: b) }
        return LlamaStateQuantizer.encode(x, as: values ? target.valueType : target.keyType)
    }
}

/// Encodes floats in the K/V types llama.cpp states hold (the inverse of ``Dequantize``).
public enum LlamaStateQuantizer {
    /// `values` as `type` (F32, F16, BF16 or Q8_0; a Q8_0 row is a whole number of blocks).
    public static func encode(_ values: [Float], as type: GGMLType) -> [UInt8] {
        if type == .f16 {
            // The bulk conversion (F16C on x86): a state of 4096 tokens holds ~50M values.
            var out = [UInt8](repeating: 0, count: values.count * 2)
            values.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBytes { dst in
                    guard let s = src.baseAddress, let d = dst.baseAddress else { return }
                    HalfPrecision.convertFloatToF16(s, d.assumingMemoryBound(to: UInt16.self), count: values.count)
                }
            }
            return out
        }
        var w = ByteWriter(capacity: values.count * 4)
        switch type {
        case .bf16: for x in values { w.u16(HalfPrecision.bf16Bits(x)) }
        case .q8_0:
            // Blocks of 32: an f16 scale d = max|x| / 127, then round(x / d) as int8.
            var b = 0
            while b < values.count {
                let block = values[b..<min(b + 32, values.count)]
                let amax = block.reduce(0) { max($0, abs($1)) }
                let d = amax / 127
                let id: Float = d != 0 ? 1 / d : 0
                w.u16(HalfPrecision.f16Bits(d))
                for x in block { w.u8(UInt8(bitPattern: Int8(max(-128, min(127, (x * id).rounded(.toNearestOrAwayFromZero)))))) }
                b += 32
            }
        default: for x in values { w.f32(x) }
        }
        return w.bytes
    }
}

/// The K and V bytes of some cells of a state, in the state's own types, layout and
/// rotation: what a container keeps for the exact (protected) tokens, so they come back
/// bit for bit whatever the K/V type.
extension LlamaSequenceState {
    /// The bytes of `cells` (indices into the occupied stream), layer by layer: K rows, then
    /// V rows (or, transposed, each cell's V elements feature by feature).
    public func bytes(ofCells cells: [Int]) throws(LlamaStateError) -> [UInt8] {
        let stream = streams[try occupiedStream()]
        let n = stream.cells.count
        guard cells.allSatisfy({ (0..<n).contains($0) }) else { throw .mismatch("cells outside the stream's \(n)") }
        var out: [UInt8] = []
        for layer in stream.layers {
            for c in cells { out += layer.keys[(c * layer.keyRowBytes)..<((c + 1) * layer.keyRowBytes)] }
            if stream.valuesTransposed {
                let e = layer.valueRowBytes
                for j in 0..<(layer.valueWidth ?? 0) {
                    for c in cells { out += layer.values[((j * n + c) * e)..<((j * n + c + 1) * e)] }
                }
            } else {
                for c in cells { out += layer.values[(c * layer.valueRowBytes)..<((c + 1) * layer.valueRowBytes)] }
            }
        }
        return out
    }

    /// The state with the bytes of `cells` replaced by `bytes` (from ``bytes(ofCells:)``).
    public func replacingCells(_ cells: [Int], with bytes: [UInt8]) throws(LlamaStateError) -> LlamaSequenceState {
        let s = try occupiedStream()
        var out = self
        var stream = streams[s]
        let n = stream.cells.count
        guard cells.allSatisfy({ (0..<n).contains($0) }) else { throw .mismatch("cells outside the stream's \(n)") }
        let expected = stream.layers.reduce(0) { $0 + cells.count * ($1.keyRowBytes + (stream.valuesTransposed ? $1.valueRowBytes * ($1.valueWidth ?? 0) : $1.valueRowBytes)) }
        guard bytes.count == expected else { throw .malformed("\(bytes.count) bytes of exact cells, expected \(expected)") }
        var o = 0
        for l in stream.layers.indices {
            let k = stream.layers[l].keyRowBytes
            for c in cells { stream.layers[l].keys.replaceSubrange((c * k)..<((c + 1) * k), with: bytes[o..<(o + k)]); o += k }
            let e = stream.layers[l].valueRowBytes
            if stream.valuesTransposed {
                for j in 0..<(stream.layers[l].valueWidth ?? 0) {
                    for c in cells { stream.layers[l].values.replaceSubrange(((j * n + c) * e)..<((j * n + c + 1) * e), with: bytes[o..<(o + e)]); o += e }
                }
            } else {
                for c in cells { stream.layers[l].values.replaceSubrange((c * e)..<((c + 1) * e), with: bytes[o..<(o + e)]); o += e }
            }
        }
        out.streams[s] = stream
        return out
    }
}
