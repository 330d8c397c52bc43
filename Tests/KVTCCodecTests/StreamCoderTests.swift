import Testing
import KVTCNumerics
@testable import KVTCCodec

/// The code section forms a blob may hold all give the same code planes.
@Suite struct StreamCoderTests {
    /// Groups of every width; codes skewed like quantized coefficients.
    static func sections(tokens: Int = 203) -> (StreamCoder, packed: [UInt8], planes: [UInt8]) {
        let plan = BitPlan(groups: [PlanGroup(start: 0, size: 3, type: .int8), PlanGroup(start: 3, size: 5, type: .int6),
                                    PlanGroup(start: 8, size: 16, type: .int4), PlanGroup(start: 24, size: 7, type: .int3),
                                    PlanGroup(start: 31, size: 9, type: .int2)])
        let coder = StreamCoder(plan: plan, tokens: tokens)
        var rng = SplitMix64(seed: 5)
        var planes = [UInt8](repeating: 0, count: coder.planeBytes)
        for (gi, g) in plan.groups.enumerated() {
            let top = (1 << g.type.bits) - 1
            for i in 0..<(tokens * g.size) {
                let u = (0..<3).reduce(0.0) { a, _ in a + Double.random(in: 0...1, using: &rng) } / 3
                planes[coder.planeOffsets[gi] + i] = UInt8(min(top, Int(u * Double(top + 1))))
            }
        }
        return (coder, coder.packedSection(planes: planes), planes)
    }

    @Test func packedAndRANSSectionsGiveTheSamePlanes() throws {
        let (coder, packed, planes) = Self.sections()
        #expect(packed.count == coder.codeBytes)
        #expect(coder.codePlanes(packed: packed) == planes)
        let rans = coder.ransSection(packed: packed)
        #expect(rans.count < packed.count)
        #expect(try coder.codePlanes(rans: rans) == planes)
    }

    /// Blobs written before the four-lane streams hold one-state streams (plane mode 1);
    /// a plane the model would not shrink is stored packed (mode 0). Both still decode.
    @Test func everyPlaneModeDecodes() throws {
        let (coder, packed, planes) = Self.sections()
        var payloads: [[UInt8]] = []
        for (gi, g) in coder.plan.groups.enumerated() {
            let count = coder.tokens * g.size
            let symbols = Array(planes[coder.planeOffsets[gi]..<(coder.planeOffsets[gi] + count)])
            var w = ByteWriter()
            if gi % 2 == 0 {
                let model = symbols.withUnsafeBufferPointer { RANSModel(counting: $0, alphabet: 1 << g.type.bits) }
                w.u8(1)
                model.write(to: &w)
                w.raw(symbols.withUnsafeBufferPointer { RANS.encode($0, model: model, lanes: 1) })
            } else {
                w.u8(0)
                let bytes = CodePacker.byteCount(codes: count, bits: g.type.bits)
                w.raw(packed[coder.codeOffsets[gi]..<(coder.codeOffsets[gi] + bytes)])
            }
            payloads.append(w.bytes)
        }
        var section = ByteWriter()
        for p in payloads { section.varint(p.count) }
        for p in payloads { section.raw(p) }
        #expect(try coder.codePlanes(rans: section.bytes) == planes)
        // An unknown mode, a short directory or a wrong lane count is an error, not a plane.
        let firstMode = section.bytes.count - payloads.reduce(0) { $0 + $1.count }
        var unknown = section.bytes
        unknown[firstMode] = 3
        #expect(throws: StreamCoder.InvalidCodeSection.self) { try coder.codePlanes(rans: unknown) }
        #expect(throws: StreamCoder.InvalidCodeSection.self) { try coder.codePlanes(rans: Array(section.bytes.dropLast())) }
        var relabelled = section.bytes
        relabelled[firstMode] = 2
        #expect(throws: StreamCoder.InvalidCodeSection.self) { try coder.codePlanes(rans: relabelled) }
    }
}
