import Foundation
import Testing
@testable import KVTCGGUF
import KVTCTestSupport

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
}
