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

/// Range asymmetric numeral systems (rANS, J. Duda) with a static order-0 model: 32-bit
/// states, byte-wise renormalization. Codes symbols to within a fraction of a percent of
/// their order-0 entropy, whatever their width (codes of 3 or 6 bits straddle bytes, which
/// byte-oriented coders such as DEFLATE cannot model).
///
/// With `lanes` states, symbol `i` is coded by state `i % lanes` and all states share one
/// byte stream, so a decoder has `lanes` independent state updates in flight instead of one
/// chain of dependent table lookups and multiplies (measured on a real cache's code planes:
/// four lanes, with the first renormalization byte read without a branch, decode 4x faster
/// than one state). Stream layout: the encoder's final states (u32, little-endian, state 0
/// first), then the renormalization bytes in the order the decoder consumes them.
public enum RANS {
    static let lower: UInt32 = 1 << 23

    /// The lane counts streams may use: 1 (the first rANS blobs) and 4.
    public static let supportedLanes: Set<Int> = [1, 4]

    /// Codes `symbols` with `model` (every symbol must have a non-zero frequency).
    public static func encode(_ symbols: UnsafeBufferPointer<UInt8>, model: RANSModel, lanes: Int = 1) -> [UInt8] {
        precondition(supportedLanes.contains(lanes))
        var emitted: [UInt8] = []
        emitted.reserveCapacity(symbols.count / 2 + 16)
        var states = (lower, lower, lower, lower)
        let shift = UInt32(RANSModel.scaleBits)
        model.frequencies.withUnsafeBufferPointer { freq in
            model.cumulative.withUnsafeBufferPointer { cum in
                @inline(__always) func step(_ x: inout UInt32, _ s: UInt8) {
                    let f = freq[Int(s)], c = cum[Int(s)]
                    precondition(f > 0, "symbol outside the model")
                    let limit = ((lower >> shift) << 8) &* f
                    while x >= limit { emitted.append(UInt8(truncatingIfNeeded: x)); x >>= 8 }
                    x = ((x / f) << shift) &+ (x % f) &+ c
                }
                // Backwards, so that the decoder meets symbol 0 first.
                if lanes == 1 {
                    for i in symbols.indices.reversed() { step(&states.0, symbols[i]) }
                    return
                }
                var i = symbols.count - 1
                while i >= 0 && i % 4 != 3 {
                    switch i % 4 {
                    case 0: step(&states.0, symbols[i])
                    case 1: step(&states.1, symbols[i])
                    default: step(&states.2, symbols[i])
                    }
                    i -= 1
                }
                while i >= 3 {
                    step(&states.3, symbols[i]); step(&states.2, symbols[i - 1])
                    step(&states.1, symbols[i - 2]); step(&states.0, symbols[i - 3])
                    i -= 4
                }
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(emitted.count + 4 * lanes)
        for x in [states.0, states.1, states.2, states.3].prefix(lanes) {
            for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: x >> (8 * UInt32(i)))) }
        }
        out.append(contentsOf: emitted.reversed())
        return out
    }

    /// Decodes exactly `count` symbols from `bytes` into `out`; the stream must be consumed
    /// exactly and every state end where the encoder's began.
    public static func decode(_ bytes: UnsafeRawBufferPointer, count: Int, model: RANSModel, lanes: Int = 1,
                              into out: UnsafeMutablePointer<UInt8>) throws(RANSError) {
        guard supportedLanes.contains(lanes), bytes.count >= 4 * lanes else { throw .corruptStream }
        let mask = UInt32(RANSModel.scale - 1)
        let shift = UInt32(RANSModel.scaleBits)
        // Slot -> symbol.
        var lookup = [UInt8](repeating: 0, count: RANSModel.scale)
        for (s, f) in model.frequencies.enumerated() where f > 0 {
            let c = Int(model.cumulative[s])
            for i in c..<(c + Int(f)) { lookup[i] = UInt8(s) }
        }
        func state(_ k: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[4 * k + $1]) << (8 * UInt32($1)) }
        }
        // An encoder's final states lie in [2^23, 2^31); from there a step cannot overflow and
        // needs at most two renormalization bytes, which the branch-free read relies on.
        for k in 0..<lanes where !(lower..<(lower << 8)).contains(state(k)) { throw .corruptStream }
        var p = 4 * lanes
        let n = bytes.count
        var overrun = false
        var finalStates: [UInt32] = []
        lookup.withUnsafeBufferPointer { table in
            model.frequencies.withUnsafeBufferPointer { freq in
                model.cumulative.withUnsafeBufferPointer { cum in
                    /// Decodes symbol `i` with state `x` and renormalizes it.
                    @inline(__always) func step(_ x: inout UInt32, _ i: Int) {
                        let slot = x & mask
                        let s = table[Int(slot)]
                        out[i] = s
                        x = freq[Int(s)] &* (x >> shift) &+ slot &- cum[Int(s)]
                        while x < lower {
                            guard p < n else { overrun = true; x = lower; return }
                            x = (x << 8) | UInt32(bytes[p]); p += 1
                        }
                    }
                    /// `step` where at least two bytes remain: the first renormalization byte is
                    /// read without a branch (a state needs one about every other symbol, which
                    /// no predictor guesses), a rare second one in a loop.
                    @inline(__always) func stepWithBytesLeft(_ x: inout UInt32, _ i: Int) {
                        let slot = x & mask
                        let s = table[Int(slot)]
                        out[i] = s
                        x = freq[Int(s)] &* (x >> shift) &+ slot &- cum[Int(s)]
                        let more = x < lower
                        let b = UInt32(bytes[p])
                        x = more ? (x << 8) | b : x
                        p &+= more ? 1 : 0
                        while x < lower {
                            guard p < n else { overrun = true; x = lower; return }
                            x = (x << 8) | UInt32(bytes[p]); p += 1
                        }
                    }
                    if lanes == 1 {
                        var x = state(0)
                        for i in 0..<count where !overrun { step(&x, i) }
                        finalStates = [x]
                    } else {
                        var x0 = state(0), x1 = state(1), x2 = state(2), x3 = state(3)
                        var i = 0
                        // Four steps read at most eight bytes unless a second byte loops.
                        while i + 4 <= count && p + 8 <= n {
                            stepWithBytesLeft(&x0, i); stepWithBytesLeft(&x1, i + 1)
                            stepWithBytesLeft(&x2, i + 2); stepWithBytesLeft(&x3, i + 3)
                            i += 4
                        }
                        while i + 4 <= count && !overrun {
                            step(&x0, i); step(&x1, i + 1); step(&x2, i + 2); step(&x3, i + 3)
                            i += 4
                        }
                        if i < count { step(&x0, i) }
                        if i + 1 < count { step(&x1, i + 1) }
                        if i + 2 < count { step(&x2, i + 2) }
                        finalStates = [x0, x1, x2, x3]
                    }
                }
            }
        }
        guard !overrun, p == n, finalStates.allSatisfy({ $0 == lower }) else { throw .corruptStream }
    }
}
