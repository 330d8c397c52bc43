import KVTCGGUF

/// Reads named tensors of a GGUF file, checking their shapes, and dequantizes them to f32.
/// Every model family loads its weights through it.
struct GGUFTensors {
    let gguf: GGUFFile

    init(_ gguf: GGUFFile) { self.gguf = gguf }

    /// The tensor `name`, which must have GGUF dimensions `shape`.
    func info(_ name: String, _ shape: [Int]) throws(ModelError) -> GGUFTensorInfo {
        guard let t = gguf.tensor(named: name) else { throw .gguf(.missing("tensor \(name)")) }
        guard t.dimensions == shape else { throw .badWeight(name: name, expected: shape, actual: t.dimensions) }
        return t
    }

    /// Dequantizes the tensors `parts` (name, GGUF dimensions) into one stacked array.
    func stacked(_ parts: [(String, [Int])]) throws(ModelError) -> [Float] {
        var infos: [GGUFTensorInfo] = []
        for (n, s) in parts { infos.append(try info(n, s)) }
        let total = infos.reduce(0) { $0 + $1.elementCount }
        return [Float](unsafeUninitializedCapacity: total) { buf, count in
            var offset = 0
            for t in infos {
                Dequantize.rows(gguf.rawBytes(of: t), type: t.type, count: t.elementCount,
                                into: buf.baseAddress! + offset)
                offset += t.elementCount
            }
            count = total
        }
    }

    /// The linear weight stacked from `parts` (row-major `out x in`) at `precision`.
    func linear(_ parts: [(String, [Int])], out: Int, in inFeatures: Int,
                precision: ModelPrecision) throws(ModelError) -> LinearWeight {
        try LinearWeight(try stacked(parts), outFeatures: out, inFeatures: inFeatures, precision: precision)
    }
}
