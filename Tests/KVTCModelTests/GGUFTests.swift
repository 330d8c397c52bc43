import Foundation
import Testing
@testable import KVTCModel

/// Builds small GGUF files byte by byte.
struct GGUFBuilder {
    var bytes: [UInt8] = []
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
    mutating func pad(to alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }

    /// A valid version-3 file: metadata of many types and two tensors (F32 [4], Q8_0 [32 x 2]).
    static func sample(version: UInt32 = 3) -> [UInt8] {
        var b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(version)
        b.u64(2) // tensors
        b.u64(6) // metadata
        b.str("general.architecture"); b.u32(8); b.str("llama")
        b.str("u8"); b.u32(0); b.bytes.append(200)
        b.str("i64"); b.u32(11); b.u64(UInt64(bitPattern: -5))
        b.str("f32"); b.u32(6); b.u32(Float(2.5).bitPattern)
        b.str("flag"); b.u32(7); b.bytes.append(1)
        // Array of arrays of strings: [["a", "bc"], []]
        b.str("nested"); b.u32(9); b.u32(9); b.u64(2)
        b.u32(8); b.u64(2); b.str("a"); b.str("bc")
        b.u32(8); b.u64(0)
        // Tensors.
        b.str("vec"); b.u32(1); b.u64(4); b.u32(0); b.u64(0)
        b.str("mat"); b.u32(2); b.u64(32); b.u64(2); b.u32(8); b.u64(32)
        b.pad(to: 32)
        for v: Float in [1, -2, 3.5, 0] { b.u32(v.bitPattern) }
        b.pad(to: 32)
        for row in 0..<2 {
            b.bytes += [0x00, 0x3C] // d = 1
            b.bytes += (0..<32).map { UInt8(bitPattern: Int8($0 - 16 + row)) }
        }
        return b.bytes
    }
}

@discardableResult
func withTemporaryFile<R>(_ bytes: [UInt8], _ body: (String) throws -> R) throws -> R {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("kvtc-gguf-\(UUID().uuidString).gguf").path
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

func ggufError(_ bytes: [UInt8]) throws -> GGUFError? {
    try withTemporaryFile(bytes) { path -> GGUFError? in
        do throws(GGUFError) { _ = try GGUFFile(path: path); return nil } catch { return error }
    }
}

@Suite struct GGUFTests {
    @Test(arguments: [UInt32(2), 3]) func parsesSample(version: UInt32) throws {
        try withTemporaryFile(GGUFBuilder.sample(version: version)) { path in
            let g = try GGUFFile(path: path)
            #expect(g.version == version)
            #expect(g.alignment == 32)
            #expect(try g.string("general.architecture") == "llama")
            #expect(try g.int("u8") == 200)
            #expect(try g.int("i64") == -5)
            #expect(try g.double("f32") == 2.5)
            #expect(g.metadata["flag"] == .bool(true))
            #expect(g.metadata["nested"] == .array([.array([.string("a"), .string("bc")]), .array([])]))
            #expect(g.metadataKeys.first == "general.architecture")
            #expect(try g.floats("vec") == [1, -2, 3.5, 0])
            let mat = try #require(g.tensor(named: "mat"))
            #expect(mat.rowLength == 32 && mat.rowCount == 2 && mat.type == .q8_0)
            let m = try g.floats("mat")
            #expect(m[0] == -16 && m[32] == -15 && m[63] == 16)
            #expect(throws: GGUFError.missing("tensor nope")) { try g.floats("nope") }
            #expect(throws: GGUFError.wrongType(key: "f32", expected: "a string")) { try g.string("f32") }
        }
    }

    @Test func everyTruncationIsATypedError() throws {
        let full = GGUFBuilder.sample()
        for n in 0..<full.count {
            let e = try ggufError(Array(full.prefix(n)))
            #expect(e != nil, "prefix of \(n) bytes parsed")
        }
    }

    @Test func badMagicAndVersion() throws {
        var bad = GGUFBuilder.sample()
        bad[0] = UInt8(ascii: "X")
        #expect(try ggufError(bad) == .badMagic)
        var v1 = GGUFBuilder.sample()
        v1[4] = 1
        #expect(try ggufError(v1) == .unsupportedVersion(1))
        #expect(try ggufError([]) == .badMagic)
    }

    @Test func hugeCountsAreRejectedBeforeAllocating() throws {
        // Tensor count 2^60.
        var b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(3); b.u64(1 << 60); b.u64(0)
        #expect(try ggufError(b.bytes) == .implausible(what: "tensor count", value: 1 << 60))
        // Metadata count 2^62.
        b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(3); b.u64(0); b.u64(1 << 62)
        #expect(try ggufError(b.bytes) == .implausible(what: "metadata count", value: 1 << 62))
        // Array of 2^40 uint32.
        b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(3); b.u64(0); b.u64(1)
        b.str("big"); b.u32(9); b.u32(4); b.u64(1 << 40)
        #expect(try ggufError(b.bytes) == .implausible(what: "array length of big", value: 1 << 40))
        // String length 2^63.
        b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(3); b.u64(0); b.u64(1)
        b.u64(1 << 63); b.bytes += [UInt8](repeating: 0, count: 16)
        #expect(try ggufError(b.bytes) == .truncated(what: "metadata key", offset: 24))
        // Unknown value type.
        b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(3); b.u64(0); b.u64(1)
        b.str("k"); b.u32(77); b.u64(0)
        #expect(try ggufError(b.bytes) == .unknownValueType(77, key: "k"))
    }

    @Test func tensorExtentsAreChecked() throws {
        func file(dims: [UInt64], type: UInt32, offset: UInt64, data: Int) -> [UInt8] {
            var b = GGUFBuilder()
            b.u32(0x4655_4747); b.u32(3); b.u64(1); b.u64(0)
            b.str("t"); b.u32(UInt32(dims.count)); for d in dims { b.u64(d) }; b.u32(type); b.u64(offset)
            b.pad(to: 32)
            b.bytes += [UInt8](repeating: 0, count: data)
            return b.bytes
        }
        #expect(try ggufError(file(dims: [4], type: 0, offset: 0, data: 16)) == nil)
        #expect(try ggufError(file(dims: [8], type: 0, offset: 0, data: 16)) == .badTensor("t", reason: "data (32 bytes at 0) lies outside the file"))
        #expect(try ggufError(file(dims: [4], type: 0, offset: 64, data: 16))
                == .badTensor("t", reason: "data (16 bytes at 64) lies outside the file"))
        #expect(try ggufError(file(dims: [4], type: 0, offset: 3, data: 16)) == .badTensor("t", reason: "offset 3 not aligned to 32"))
        #expect(try ggufError(file(dims: [16], type: 8, offset: 0, data: 64))
                == .badTensor("t", reason: "row of 16 is not a multiple of the Q8_0 block size 32"))
        #expect(try ggufError(file(dims: [4], type: 99, offset: 0, data: 16)) == .unsupportedTensorType(99, tensor: "t"))
        #expect(try ggufError(file(dims: [4, 1 << 31], type: 0, offset: 0, data: 16))
                == .badTensor("t", reason: "extent 2147483648"))
        let overflow = try ggufError(file(dims: [UInt64(Int32.max), UInt64(Int32.max), UInt64(Int32.max)], type: 0, offset: 0, data: 16))
        #expect(overflow == .badTensor("t", reason: "too many elements"))
    }

    @Test func alignmentFromMetadata() throws {
        var b = GGUFBuilder()
        b.u32(0x4655_4747); b.u32(3); b.u64(1); b.u64(1)
        b.str("general.alignment"); b.u32(4); b.u32(64)
        b.str("t"); b.u32(1); b.u64(2); b.u32(0); b.u64(0)
        b.pad(to: 64)
        b.u32(Float(7).bitPattern); b.u32(Float(8).bitPattern)
        try withTemporaryFile(b.bytes) { path in
            let g = try GGUFFile(path: path)
            #expect(g.alignment == 64 && g.dataOffset % 64 == 0)
            #expect(try g.floats("t") == [7, 8])
        }
        var bad = GGUFBuilder()
        bad.u32(0x4655_4747); bad.u32(3); bad.u64(0); bad.u64(1)
        bad.str("general.alignment"); bad.u32(4); bad.u32(48)
        #expect(try ggufError(bad.bytes) == .badAlignment(48))
    }

    @Test func realModelDirectory() throws {
        let g = try Shared.gguf.get()
        #expect(g.version == 3)
        #expect(try g.int("llama.block_count") == 30)
        #expect(try g.string("tokenizer.ggml.pre") == "smollm")
        #expect(g.tensor(named: "token_embd.weight")?.type == .q8_0)
        #expect(g.tensor(named: "blk.0.attn_q.weight")?.dimensions == [576, 576])
        #expect(g.tensor(named: "output.weight") == nil) // tied embeddings
    }
}

@Suite struct ModelLoadingErrorTests {
    @Test func unusableFilesGiveTypedErrors() throws {
        #expect(throws: ModelError.gguf(.io(path: "/nonexistent.gguf", message: "No such file or directory"))) {
            try LlamaModel(path: "/nonexistent.gguf")
        }
        // A valid GGUF without llama hyperparameters.
        try withTemporaryFile(GGUFBuilder.sample()) { path in
            #expect(throws: ModelError.gguf(.missing("llama.block_count"))) { try LlamaModel(path: path) }
        }
        // A truncated copy of the real model.
        let real = try Shared.gguf.get()
        let head = try Data(contentsOf: URL(fileURLWithPath: real.path), options: .alwaysMapped).prefix(2_000_000)
        try withTemporaryFile(Array(head)) { path in
            #expect(throws: ModelError.self) { try LlamaModel(path: path) }
        }
    }
}
