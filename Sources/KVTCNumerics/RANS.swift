/// Errors decoding an rANS stream or its model.
public enum RANSError: Error, Equatable, CustomStringConvertible {
    /// The frequency table is malformed (does not sum to the scale, too many symbols).
    case badModel
    /// The stream ends early, has bytes left over, or does not return to the initial state.
    case corruptStream

    public var description: String {
        switch self {
        case .badModel: return "rANS frequency table is malformed"
        case .corruptStream: return "rANS stream is corrupt"
        }
    }
}

/// A static order-0 model for ``RANS``: the frequency of each symbol of an alphabet of
/// `1 << bits` symbols, normalized to sum to `1 << RANSModel.scaleBits`.
public struct RANSModel: Sendable, Equatable {
    /// Frequencies sum to `1 << scaleBits`.
    public static let scaleBits = 14
    static let scale = 1 << scaleBits

    /// Normalized frequency of each symbol.
    public let frequencies: [UInt32]
    /// Cumulative frequency before each symbol.
    let cumulative: [UInt32]

    init(validated frequencies: [UInt32]) {
        self.frequencies = frequencies
        var c: [UInt32] = []
        c.reserveCapacity(frequencies.count)
        var s: UInt32 = 0
        for f in frequencies { c.append(s); s += f }
        cumulative = c
    }

    /// The model of `symbols` (each `< alphabet`): their counts scaled to the frequency
    /// scale, every symbol that occurs keeping a frequency of at least 1.
    public init(counting symbols: UnsafeBufferPointer<UInt8>, alphabet: Int) {
        precondition(alphabet >= 1 && alphabet <= 256)
        var counts = [Int](repeating: 0, count: alphabet)
        for s in symbols { counts[Int(s)] += 1 }
        let total = max(1, symbols.count)
        var freq = counts.map { c -> Int in c == 0 ? 0 : max(1, Int((Double(c) * Double(RANSModel.scale) / Double(total)).rounded())) }
        if symbols.isEmpty { freq[0] = RANSModel.scale }
        // Make the frequencies sum to the scale, adjusting the largest ones.
        var sum = freq.reduce(0, +)
        while sum != RANSModel.scale {
            let order = freq.indices.sorted { freq[$0] > freq[$1] }
            for i in order where sum != RANSModel.scale {
                if sum > RANSModel.scale, freq[i] > 1 { freq[i] -= 1; sum -= 1 }
                else if sum < RANSModel.scale, freq[i] > 0 { freq[i] += 1; sum += 1 }
            }
        }
        self.init(validated: freq.map { UInt32($0) })
    }

    /// Appends the table: one LEB128 varint per symbol of the alphabet.
    public func write(to w: inout ByteWriter) {
        for f in frequencies { w.varint(Int(f)) }
    }

    /// Reads a table of `alphabet` symbols, checking that it sums to the scale.
    public static func read(from r: inout ByteReader<[UInt8]>, alphabet: Int) throws(RANSError) -> RANSModel {
        var freq: [UInt32] = []
        var sum = 0
        for _ in 0..<alphabet {
            guard let f = try? r.varint(max: scale) else { throw .badModel }
            freq.append(UInt32(f))
            sum += f
        }
        guard sum == scale else { throw .badModel }
        return RANSModel(validated: freq)
    }
}

/// Range asymmetric numeral systems (rANS, J. Duda) with a static order-0 model: one 32-bit
/// state, byte-wise renormalization. Codes symbols to within a fraction of a percent of
/// their order-0 entropy, whatever their width (codes of 3 or 6 bits straddle bytes, which
/// byte-oriented coders such as DEFLATE cannot model).
///
/// Stream layout: the final encoder state (u32, little-endian), then the renormalization
/// bytes in the order the decoder consumes them.
public enum RANS {
    static let lower: UInt32 = 1 << 23

    /// Codes `symbols` with `model` (every symbol must have a non-zero frequency).
    public static func encode(_ symbols: UnsafeBufferPointer<UInt8>, model: RANSModel) -> [UInt8] {
        var emitted: [UInt8] = []
        emitted.reserveCapacity(symbols.count / 2 + 16)
        var x = lower
        let shift = UInt32(RANSModel.scaleBits)
        model.frequencies.withUnsafeBufferPointer { freq in
            model.cumulative.withUnsafeBufferPointer { cum in
                for s in symbols.reversed() {
                    let f = freq[Int(s)], c = cum[Int(s)]
                    precondition(f > 0, "symbol outside the model")
                    let limit = ((lower >> shift) << 8) &* f
                    while x >= limit { emitted.append(UInt8(truncatingIfNeeded: x)); x >>= 8 }
                    x = ((x / f) << shift) &+ (x % f) &+ c
                }
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(emitted.count + 4)
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: x >> (8 * UInt32(i)))) }
        out.append(contentsOf: emitted.reversed())
        return out
    }

    /// Decodes exactly `count` symbols from `bytes` into `out`; the stream must be consumed
    /// exactly and end in the encoder's initial state.
    public static func decode(_ bytes: UnsafeRawBufferPointer, count: Int, model: RANSModel,
                              into out: UnsafeMutablePointer<UInt8>) throws(RANSError) {
        guard bytes.count >= 4 else { throw .corruptStream }
        let mask = UInt32(RANSModel.scale - 1)
        let shift = UInt32(RANSModel.scaleBits)
        // Slot -> symbol.
        var lookup = [UInt8](repeating: 0, count: RANSModel.scale)
        for (s, f) in model.frequencies.enumerated() where f > 0 {
            let c = Int(model.cumulative[s])
            for i in c..<(c + Int(f)) { lookup[i] = UInt8(s) }
        }
        var x = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        var p = 4
        let n = bytes.count
        var overrun = false
        lookup.withUnsafeBufferPointer { table in
            model.frequencies.withUnsafeBufferPointer { freq in
                model.cumulative.withUnsafeBufferPointer { cum in
                    for i in 0..<count {
                        let slot = x & mask
                        let s = table[Int(slot)]
                        out[i] = s
                        x = freq[Int(s)] &* (x >> shift) &+ slot &- cum[Int(s)]
                        while x < lower {
                            guard p < n else { overrun = true; return }
                            x = (x << 8) | UInt32(bytes[p]); p += 1
                        }
                    }
                }
            }
        }
        guard !overrun, p == n, x == lower else { throw .corruptStream }
    }
}
