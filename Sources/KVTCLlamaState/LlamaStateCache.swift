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
        let stream = streams[try occupiedStream()]
        let rotation = try attentionRotation(headDim: geometry.headDim)
        let n = stream.cells.count, L = geometry.layers, w = geometry.featuresPerLayer, p = geometry.featuresPerToken
        guard stream.layers.count == L else { throw .mismatch("\(stream.layers.count) layers, the model has \(L)") }
        var keys = [Float](repeating: 0, count: n * p), values = [Float](repeating: 0, count: n * p)
        for (l, layer) in stream.layers.enumerated() {
            guard Self.width(layer.keyType, bytes: layer.keyRowBytes) == w else {
                throw .mismatch("layer \(l) K rows hold \(Self.width(layer.keyType, bytes: layer.keyRowBytes)) values, the model \(w)")
            }
            var k = layer.keys.withUnsafeBytes { Dequantize.floats($0, type: layer.keyType, count: n * w) }
            if let b = rotation.keyBlock { AttentionRotation.apply(&k, block: b) }
            for i in 0..<n { for j in 0..<w { keys[i * p + l * w + j] = k[i * w + j] } }
            if stream.valuesTransposed {
                guard layer.valueWidth == w else { throw .mismatch("layer \(l) V holds \(layer.valueWidth ?? 0) values per cell, the model \(w)") }
                let v = layer.values.withUnsafeBytes { Dequantize.floats($0, type: layer.valueType, count: n * w) }
                for j in 0..<w { for i in 0..<n { values[i * p + l * w + j] = v[j * n + i] } }
                if let b = rotation.valueBlock {
                    // Transposed V of a quantized type does not occur (llama.cpp needs flash attention for it).
                    throw .malformed("transposed V of quantized type \(layer.valueType) with a \(b)-value rotation")
                }
            } else {
                guard Self.width(layer.valueType, bytes: layer.valueRowBytes) == w else {
                    throw .mismatch("layer \(l) V rows hold \(Self.width(layer.valueType, bytes: layer.valueRowBytes)) values, the model \(w)")
                }
                var v = layer.values.withUnsafeBytes { Dequantize.floats($0, type: layer.valueType, count: n * w) }
                if let b = rotation.valueBlock { AttentionRotation.apply(&v, block: b) }
                for i in 0..<n { for j in 0..<w { values[i * p + l * w + j] = v[i * w + j] } }
            }
        }
        do {
            let cache = try KVCache(geometry: geometry, rope: rope, positions: stream.cells.map { Int($0.position) },
                                    keys: keys, values: values, model: model)
            try cache.validateFinite()
            return cache
        } catch {
            throw .malformed(error.description)
        }
    }

    /// The same state with its K and V replaced by `cache`'s, written in the state's own
    /// types and layout (cells, positions, token ids and `v_trans` unchanged).
    public func replacingRows(with cache: KVCache) throws(LlamaStateError) -> LlamaSequenceState {
        let s = try occupiedStream()
        var out = self
        var stream = streams[s]
        let n = stream.cells.count, g = cache.geometry, w = g.featuresPerLayer, p = g.featuresPerToken
        let rotation = try attentionRotation(headDim: g.headDim)
        guard cache.tokenCount == n else { throw .mismatch("the cache holds \(cache.tokenCount) tokens, the state \(n) cells") }
        guard stream.layers.count == g.layers else { throw .mismatch("\(stream.layers.count) layers, the cache has \(g.layers)") }
        for (i, c) in stream.cells.enumerated() where Int(c.position) != cache.positions[i] {
            throw .mismatch("cell \(i) is at position \(c.position), the cache's token at \(cache.positions[i])")
        }
        for l in 0..<g.layers {
            var k = [Float](repeating: 0, count: n * w), v = [Float](repeating: 0, count: n * w)
            for i in 0..<n {
                for j in 0..<w {
                    k[i * w + j] = cache.keys[i * p + l * w + j]
                    if stream.valuesTransposed { v[j * n + i] = cache.values[i * p + l * w + j] } else { v[i * w + j] = cache.values[i * p + l * w + j] }
                }
            }
            if let b = rotation.keyBlock { AttentionRotation.apply(&k, block: b) }
            if let b = rotation.valueBlock, !stream.valuesTransposed { AttentionRotation.apply(&v, block: b) }
            stream.layers[l].keys = LlamaStateQuantizer.encode(k, as: stream.layers[l].keyType)
            stream.layers[l].values = LlamaStateQuantizer.encode(v, as: stream.layers[l].valueType)
        }
        out.streams[s] = stream
        return out
    }
}

/// Encodes floats in the K/V types llama.cpp states hold (the inverse of ``Dequantize``).
public enum LlamaStateQuantizer {
    /// `values` as `type` (F32, F16, BF16 or Q8_0; a Q8_0 row is a whole number of blocks).
    public static func encode(_ values: [Float], as type: GGMLType) -> [UInt8] {
        var w = ByteWriter(capacity: values.count * 4)
        switch type {
        case .f16: for x in values { w.u16(HalfPrecision.f16Bits(x)) }
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
