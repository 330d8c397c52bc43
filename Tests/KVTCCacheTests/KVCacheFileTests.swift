import Foundation
import Testing
@testable import KVTCCache

private func sampleCache(tokens: Int = 5, layout: RoPELayout = .interleaved) -> KVCache {
    let g = KVGeometry(layers: 2, kvHeads: 3, headDim: 4)
    let p = g.featuresPerToken
    let keys = (0..<(tokens * p)).map { Float($0 % 97) / 8 - 3 }
    let values = (0..<(tokens * p)).map { Float($0 % 89) / 16 + 1 }
    return try! KVCache(geometry: g, rope: RoPE(layout: layout, theta: 10000, rotaryDims: 4),
                        positions: Array(10..<(10 + tokens)), keys: keys, values: values, model: "unit")
}

@Suite struct KVCacheFileTests {
    @Test(arguments: [TensorDType.f16, .bf16, .f32])
    func roundTripsEveryDType(dtype: TensorDType) throws {
        let cache = sampleCache()
        let bytes = KVCacheFile.encode(cache, dtype: dtype)
        let back = try KVCacheFile.decode(SafetensorsFile(bytes: bytes))
        // Values are multiples of 1/16 below 16: exact in every dtype.
        #expect(back == cache)
    }

    /// A hybrid model's cache (layers with their own RoPE and window) keeps every layer's
    /// facts through the file; a uniform cache's file has no per-layer metadata; damaged
    /// per-layer metadata is a typed error.
    @Test func perLayerAttentionRoundTrips() throws {
        let u = sampleCache()
        let layers = [LayerAttention(rope: RoPE(layout: .half, theta: 10000, rotaryDims: 4), window: 3),
                      LayerAttention(rope: RoPE(layout: .half, theta: 1_000_000, rotaryDims: 4))]
        let hybrid = try KVCache(geometry: u.geometry, rope: layers[1].rope, layerAttention: layers, positions: u.positions,
                                 keys: u.keys, values: u.values, model: "unit")
        #expect(!hybrid.isUniform && u.isUniform)
        let file = try SafetensorsFile(bytes: KVCacheFile.encode(hybrid))
        #expect(file.metadata[KVCacheFile.Key.layerAttention] != nil)
        #expect(try KVCacheFile.decode(file) == hybrid)
        #expect(try SafetensorsFile(bytes: KVCacheFile.encode(u)).metadata[KVCacheFile.Key.layerAttention] == nil)
        var writer = SafetensorsWriter()
        let original = try SafetensorsFile(bytes: KVCacheFile.encode(hybrid, dtype: .f32))
        for (k, v) in original.metadata { writer.metadata[k] = v }
        writer.metadata[KVCacheFile.Key.layerAttention] = "[{\"rope\":{\"layout\":\"half\"}}]"
        for name in original.entries.keys.sorted() {
            let e = original.entries[name]!
            writer.add(name, dtype: e.dtype, shape: e.shape, bytes: Array(try original.rawBytes(of: name)))
        }
        #expect(throws: KVCacheFileError.self) { _ = try KVCacheFile.decode(SafetensorsFile(bytes: writer.encoded())) }
        // A cache cannot claim attention facts for another number of layers.
        #expect(throws: KVCacheError.self) {
            _ = try KVCache(geometry: u.geometry, rope: u.rope, layerAttention: [layers[0]], positions: u.positions,
                            keys: u.keys, values: u.values)
        }
    }

    @Test func layoutIsHeadsTokensDim() throws {
        let cache = sampleCache(tokens: 3)
        let file = try SafetensorsFile(bytes: KVCacheFile.encode(cache, dtype: .f32))
        let e = try #require(file.entries["layers.1.key"])
        #expect(e.shape == [3, 3, 4])
        var layer = [Float](repeating: 0, count: 36)
        try layer.withUnsafeMutableBufferPointer { try file.readFloats("layers.1.key", into: $0.baseAddress!) }
        // [h=2, t=1, i=3] is token 1, layer 1, head 2, dim 3 of the token-major cache.
        let p = cache.geometry.featuresPerToken
        #expect(layer[(2 * 3 + 1) * 4 + 3] == cache.keys[1 * p + (1 * 3 + 2) * 4 + 3])
        #expect(file.metadata["kvtc.rope_layout"] == "interleaved")
        #expect(try file.readInt64("positions") == [10, 11, 12])
    }

    @Test func ropeRoundTripsAndMatchesDefinition() {
        for layout in [RoPELayout.interleaved, .half] {
            let rope = RoPE(layout: layout, theta: 100, rotaryDims: 4)
            var row: [Float] = [1, 2, 3, 4]
            let original = row
            row.withUnsafeMutableBufferPointer { rope.rotate(rows: $0.baseAddress!, rowLength: 4, positions: [3], headDim: 4, inverse: false) }
            // Pair 0 rotates by 3 rad, pair 1 by 3 / sqrt(100) = 0.3 rad.
            let (a, b) = layout == .interleaved ? (0, 1) : (0, 2)
            #expect(abs(row[a] - (original[a] * cos(3) - original[b] * sin(3))) < 1e-5)
            #expect(abs(row[b] - (original[a] * sin(3) + original[b] * cos(3))) < 1e-5)
            row.withUnsafeMutableBufferPointer { rope.rotate(rows: $0.baseAddress!, rowLength: 4, positions: [3], headDim: 4, inverse: true) }
            for i in 0..<4 { #expect(abs(row[i] - original[i]) < 1e-5) }
        }
    }

    @Test func rejectsForeignAndMalformedFiles() throws {
        let good = KVCacheFile.encode(sampleCache())
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(bytes: Array(good.prefix(5))) }
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(bytes: Array(good.dropLast(3))) }
        #expect(throws: SafetensorsError.self) { try SafetensorsFile(bytes: Array("not a safetensors file at all".utf8)) }
        // A valid safetensors file that is not a cache.
        var w = SafetensorsWriter()
        w.add("weight", dtype: .f32, shape: [2], bytes: [UInt8](repeating: 0, count: 8))
        #expect(throws: KVCacheFileError.self) { try KVCacheFile.decode(SafetensorsFile(bytes: w.encoded())) }
        // Missing RoPE metadata.
        var w2 = SafetensorsWriter()
        w2.add("layers.0.key", dtype: .f32, shape: [1, 1, 2], bytes: [UInt8](repeating: 0, count: 8))
        w2.add("layers.0.value", dtype: .f32, shape: [1, 1, 2], bytes: [UInt8](repeating: 0, count: 8))
        #expect(throws: KVCacheFileError.self) { try KVCacheFile.decode(SafetensorsFile(bytes: w2.encoded())) }
        // Mixed dtypes and mismatched shapes.
        var w3 = SafetensorsWriter()
        w3.metadata["kvtc.rope_layout"] = "none"
        w3.add("layers.0.key", dtype: .f32, shape: [1, 1, 2], bytes: [UInt8](repeating: 0, count: 8))
        w3.add("layers.0.value", dtype: .f16, shape: [1, 1, 2], bytes: [UInt8](repeating: 0, count: 4))
        #expect(throws: KVCacheFileError.self) { try KVCacheFile.decode(SafetensorsFile(bytes: w3.encoded())) }
        // Infinity in a value.
        var w4 = SafetensorsWriter()
        w4.metadata["kvtc.rope_layout"] = "none"
        w4.add("layers.0.key", dtype: .f32, shape: [1, 1, 1], bytes: [0, 0, 0, 0])
        w4.add("layers.0.value", dtype: .f32, shape: [1, 1, 1], bytes: [0, 0, 0x80, 0x7F])
        #expect(throws: KVCacheFileError.cache(.nonFinite(stream: "values", token: 0))) {
            try KVCacheFile.decode(SafetensorsFile(bytes: w4.encoded()))
        }
    }
}

@Suite struct KVCacheTests {
    /// The finiteness check runs over token blocks in parallel and still names the first bad
    /// token of the range (and of the first stream that has one), never a later one.
    @Test func validateFiniteNamesTheFirstBadToken() throws {
        var cache = sampleCache(tokens: 700)
        try cache.validateFinite()
        let p = cache.geometry.featuresPerToken
        var values = cache.values
        values[650 * p + 3] = .infinity
        values[70 * p + 1] = .nan
        values[400 * p] = .nan
        try cache.replaceStreams(keys: cache.keys, values: values)
        #expect(throws: KVCacheError.nonFinite(stream: "values", token: 70)) { try cache.validateFinite() }
        #expect(throws: KVCacheError.nonFinite(stream: "values", token: 400)) { try cache.validateFinite(tokens: 71..<700) }
        #expect(throws: KVCacheError.nonFinite(stream: "values", token: 650)) { try cache.validateFinite(tokens: 401..<700) }
        try cache.validateFinite(tokens: 0..<70)
        try cache.validateFinite(tokens: 401..<650)
        var keys = cache.keys
        keys[699 * p + p - 1] = -.infinity
        try cache.replaceStreams(keys: keys, values: values)
        #expect(throws: KVCacheError.nonFinite(stream: "keys", token: 699)) { try cache.validateFinite() }
        #expect(throws: KVCacheError.tokenRange(690..<701, count: 700)) { try cache.validateFinite(tokens: 690..<701) }
    }
}
