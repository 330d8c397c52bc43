import Foundation
import KVTCNumerics

/// Errors reading a KV cache interchange file.
public enum KVCacheFileError: Error, Equatable, CustomStringConvertible {
    /// The container itself is broken.
    case container(SafetensorsError)
    /// The file is valid safetensors but not a KV cache in this project's layout.
    case layout(String)
    /// The cache's contents are invalid.
    case cache(KVCacheError)

    public var description: String {
        switch self {
        case .container(let e): return e.description
        case .layout(let m): return "not a KV cache interchange file: \(m)"
        case .cache(let e): return e.description
        }
    }
}

/// The KV cache interchange file: a safetensors file holding one sequence.
///
/// Tensors `layers.{l}.key` and `layers.{l}.value` of shape `[kv_heads, tokens, head_dim]` for
/// every layer, all of one dtype (F16, BF16 or F32); optional `positions` (I64 `[tokens]`).
/// Metadata: `kvtc.rope_layout` (`interleaved`, `half` or `none`), `kvtc.rope_theta`,
/// optional `kvtc.rope_dims` and `kvtc.model`; for a cache whose layers differ in rotation
/// or window (Gemma 3's sliding and global layers), `kvtc.layer_attention` lists every
/// layer's as JSON (`[{"rope":{"layout":"half","theta":10000,"rotaryDims":256},"window":512}, ...]`),
/// while `kvtc.rope_*` give the global layers'. Keys are stored rotated, as the model holds
/// them. Any other tensor is an error.
public enum KVCacheFile {
    /// Metadata keys.
    public enum Key {
        public static let ropeLayout = "kvtc.rope_layout"
        public static let ropeTheta = "kvtc.rope_theta"
        public static let ropeDims = "kvtc.rope_dims"
        public static let model = "kvtc.model"
        public static let layerAttention = "kvtc.layer_attention"
    }

    /// Encodes a cache as an interchange file.
    public static func encode(_ cache: KVCache, dtype: TensorDType = .f16) -> [UInt8] {
        precondition(dtype != .i64, "cache tensors are floating point")
        let g = cache.geometry
        let t = cache.tokenCount
        let p = g.featuresPerToken
        var writer = SafetensorsWriter()
        writer.metadata[Key.ropeLayout] = cache.rope.layout.rawValue
        writer.metadata[Key.ropeTheta] = "\(cache.rope.theta)"
        writer.metadata[Key.ropeDims] = "\(cache.rope.rotaryDims)"
        if !cache.model.isEmpty { writer.metadata[Key.model] = cache.model }
        if !cache.isUniform, let json = try? JSONEncoder().encode(cache.layerAttention) {
            writer.metadata[Key.layerAttention] = String(decoding: json, as: UTF8.self)
        }
        for l in 0..<g.layers {
            for (suffix, stream) in [("key", cache.keys), ("value", cache.values)] {
                var bytes = [UInt8](repeating: 0, count: g.featuresPerLayer * t * dtype.size)
                stream.withUnsafeBufferPointer { src in
                    bytes.withUnsafeMutableBytes { raw in
                        for h in 0..<g.kvHeads {
                            for tok in 0..<t {
                                let s = src.baseAddress! + tok * p + (l * g.kvHeads + h) * g.headDim
                                let o = ((h * t) + tok) * g.headDim
                                for i in 0..<g.headDim {
                                    switch dtype {
                                    case .f32: raw.storeBytes(of: s[i].bitPattern.littleEndian, toByteOffset: 4 * (o + i), as: UInt32.self)
                                    case .f16: raw.storeBytes(of: HalfPrecision.f16Bits(s[i]).littleEndian, toByteOffset: 2 * (o + i), as: UInt16.self)
                                    case .bf16: raw.storeBytes(of: HalfPrecision.bf16Bits(s[i]).littleEndian, toByteOffset: 2 * (o + i), as: UInt16.self)
                                    case .i64: break
                                    }
                                }
                            }
                        }
                    }
                }
                writer.add("layers.\(l).\(suffix)", dtype: dtype, shape: [g.kvHeads, t, g.headDim], bytes: bytes)
            }
        }
        var pos = [UInt8](repeating: 0, count: 8 * t)
        pos.withUnsafeMutableBytes { raw in
            for (i, v) in cache.positions.enumerated() { raw.storeBytes(of: Int64(v).littleEndian, toByteOffset: 8 * i, as: Int64.self) }
        }
        writer.add("positions", dtype: .i64, shape: [t], bytes: pos)
        return writer.encoded()
    }

    /// Writes a cache to `path` atomically.
    public static func write(_ cache: KVCache, to path: String, dtype: TensorDType = .f16) throws(KVCacheFileError) {
        let data = Data(encode(cache, dtype: dtype))
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw .container(.io("cannot write \(path): \(error.localizedDescription)"))
        }
    }

    /// Reads a cache from a file.
    public static func read(_ path: String) throws(KVCacheFileError) -> KVCache {
        let file: SafetensorsFile
        do { file = try SafetensorsFile(contentsOf: path) } catch { throw .container(error) }
        return try decode(file)
    }

    /// Decodes a parsed safetensors file as a cache.
    public static func decode(_ file: SafetensorsFile) throws(KVCacheFileError) -> KVCache {
        // Layers are numbered 0..<L without gaps.
        var layers = 0
        while file.entries["layers.\(layers).key"] != nil || file.entries["layers.\(layers).value"] != nil { layers += 1 }
        guard layers > 0 else { throw .layout("no tensor layers.0.key") }
        for name in file.entries.keys where name != "positions" {
            let parts = name.split(separator: ".")
            guard parts.count == 3, parts[0] == "layers", let l = Int(parts[1]), l >= 0, l < layers,
                  parts[2] == "key" || parts[2] == "value" else {
                throw .layout("unexpected tensor \(name)")
            }
        }
        guard let first = file.entries["layers.0.key"] else { throw .layout("no tensor layers.0.key") }
        guard first.shape.count == 3 else { throw .layout("layers.0.key has shape \(first.shape), expected [kv_heads, tokens, head_dim]") }
        guard first.dtype != .i64 else { throw .layout("layers.0.key has dtype I64") }
        let heads = first.shape[0], tokens = first.shape[1], headDim = first.shape[2]
        guard heads > 0, headDim > 0 else { throw .layout("layers.0.key has an empty head dimension") }
        for l in 0..<layers {
            for s in ["key", "value"] {
                let name = "layers.\(l).\(s)"
                guard let e = file.entries[name] else { throw .layout("missing tensor \(name)") }
                guard e.shape == first.shape else { throw .layout("\(name) has shape \(e.shape), expected \(first.shape)") }
                guard e.dtype == first.dtype else { throw .layout("\(name) is \(e.dtype.rawValue), layers.0.key is \(first.dtype.rawValue): one dtype per file") }
            }
        }
        let geometry = KVGeometry(layers: layers, kvHeads: heads, headDim: headDim)
        let layoutName = file.metadata[Key.ropeLayout] ?? ""
        guard let layout = RoPELayout(rawValue: layoutName) else {
            throw .layout("metadata \(Key.ropeLayout) is '\(layoutName)', expected interleaved, half or none")
        }
        var theta = 10000.0
        if layout != .none || file.metadata[Key.ropeTheta] != nil {
            guard let s = file.metadata[Key.ropeTheta], let v = Double(s), v.isFinite, v > 1 else {
                throw .layout("metadata \(Key.ropeTheta) is missing or not a number > 1")
            }
            theta = v
        }
        var dims = headDim
        if let s = file.metadata[Key.ropeDims] {
            guard let v = Int(s) else { throw .layout("metadata \(Key.ropeDims) is not an integer") }
            dims = v
        }
        let rope = RoPE(layout: layout, theta: theta, rotaryDims: dims)
        var layerAttention: [LayerAttention]?
        if let s = file.metadata[Key.layerAttention] {
            guard let list = try? JSONDecoder().decode([LayerAttention].self, from: Data(s.utf8)), list.count == layers else {
                throw .layout("metadata \(Key.layerAttention) is not a list of \(layers) layers' RoPE and window")
            }
            layerAttention = list
        }
        var positions = Array(0..<tokens)
        if let e = file.entries["positions"] {
            guard e.dtype == .i64, e.shape == [tokens] else {
                throw .layout("positions must be I64 [\(tokens)], found \(e.dtype.rawValue) \(e.shape)")
            }
            let raw: [Int64]
            do { raw = try file.readInt64("positions") } catch { throw .container(error) }
            guard raw.allSatisfy({ $0 >= 0 && $0 < Int64(Int32.max) }) else { throw .layout("positions out of range") }
            positions = raw.map { Int($0) }
        }
        let p = geometry.featuresPerToken
        var keys = [Float](repeating: 0, count: tokens * p)
        var values = [Float](repeating: 0, count: tokens * p)
        var layerBuffer = [Float](repeating: 0, count: heads * tokens * headDim)
        for l in 0..<layers {
            for (s, isKey) in [("key", true), ("value", false)] {
                do {
                    try layerBuffer.withUnsafeMutableBufferPointer { b throws(SafetensorsError) in
                        try file.readFloats("layers.\(l).\(s)", into: b.baseAddress!)
                    }
                } catch { throw .container(error) }
                func scatter(_ dst: inout [Float]) {
                    layerBuffer.withUnsafeBufferPointer { src in
                        dst.withUnsafeMutableBufferPointer { d in
                            for h in 0..<heads {
                                for t in 0..<tokens {
                                    let from = src.baseAddress! + (h * tokens + t) * headDim
                                    let to = d.baseAddress! + t * p + (l * heads + h) * headDim
                                    to.update(from: from, count: headDim)
                                }
                            }
                        }
                    }
                }
                if isKey { scatter(&keys) } else { scatter(&values) }
            }
        }
        do {
            let cache = try KVCache(geometry: geometry, rope: rope, layerAttention: layerAttention, positions: positions, keys: keys,
                                    values: values, model: file.metadata[Key.model] ?? "")
            try cache.validateFinite()
            return cache
        } catch { throw .cache(error) }
    }
}
