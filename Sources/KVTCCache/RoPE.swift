import Foundation
import KVTCNumerics

/// How a model pairs the dimensions of a head for rotary position embedding.
public enum RoPELayout: String, Codable, Sendable, CaseIterable {
    /// Pairs `(2i, 2i+1)`, as GGUF/llama.cpp store llama weights.
    case interleaved
    /// Pairs `(i, i + rotaryDims/2)`, as Hugging Face/NeoX `rotate_half`.
    case half
    /// No rotation (keys are stored as projected).
    case none
}

/// Rotary position embedding settings of a model's keys.
public struct RoPE: Hashable, Codable, Sendable {
    /// Pairing of dimensions.
    public var layout: RoPELayout
    /// The base ("theta") of the rotation frequencies.
    public var theta: Double
    /// Number of leading dimensions of each head that are rotated (the rest pass through).
    public var rotaryDims: Int

    public init(layout: RoPELayout, theta: Double, rotaryDims: Int) {
        self.layout = layout
        self.theta = theta
        self.rotaryDims = rotaryDims
    }

    /// No rotation.
    public static func none(headDim: Int) -> RoPE { RoPE(layout: .none, theta: 10000, rotaryDims: headDim) }

    /// Checks the settings against a head dimension.
    public func validate(headDim: Int) throws(KVCacheError) {
        if layout == .none { return }
        guard rotaryDims > 0, rotaryDims <= headDim, rotaryDims % 2 == 0 else {
            throw .invalidGeometry("rotary dims \(rotaryDims) for head dim \(headDim)")
        }
        guard theta.isFinite, theta > 1 else { throw .invalidGeometry("RoPE theta \(theta)") }
    }

    /// Rotates every head of every key row in place: by `+angle` (`inverse == false`, what a
    /// model does) or by `-angle` (`inverse == true`, which removes the position).
    ///
    /// - Parameters:
    ///   - rows: `positions.count` rows of `rowLength` floats.
    ///   - headDim: dimension of one head; every `headDim` block of a row is one head.
    public func rotate(rows: UnsafeMutablePointer<Float>, rowLength: Int, positions: [Int],
                       headDim: Int, inverse: Bool) {
        rotate(rows: rows, rowStride: rowLength, heads: rowLength / headDim, headDim: headDim,
               positions: positions, inverse: inverse)
    }

    /// The cosines and sines of every position's rotation angles, computed once and applied
    /// to any number of rows (a model rotates the queries and keys of every layer with one
    /// table per forward pass).
    public struct Table: Sendable {
        /// Rotated pairs per head (`rotaryDims / 2`).
        public let pairs: Int
        /// `positions x pairs` cosines.
        public let cos: [Float]
        /// `positions x pairs` sines.
        public let sin: [Float]
        /// The positions, in row order.
        public var count: Int { pairs == 0 ? 0 : cos.count / pairs }
    }

    /// The rotation table of `positions`. Angles are computed in double precision (large
    /// positions stay accurate) and rounded to single precision once per position and pair.
    public func table(positions: [Int]) -> Table {
        let pairs = rotaryDims / 2
        let freqs = (0..<pairs).map { pow(theta, -2.0 * Double($0) / Double(rotaryDims)) }
        var c = [Float](repeating: 0, count: positions.count * pairs)
        var s = [Float](repeating: 0, count: positions.count * pairs)
        for (t, pos) in positions.enumerated() {
            for i in 0..<pairs {
                let a = Double(pos) * freqs[i]
                c[t * pairs + i] = Float(Foundation.cos(a))
                s[t * pairs + i] = Float(Foundation.sin(a))
            }
        }
        return Table(pairs: pairs, cos: c, sin: s)
    }

    /// Rotates the first `heads` heads of each of `positions.count` rows, `rowStride` floats
    /// apart, in place.
    public func rotate(rows: UnsafeMutablePointer<Float>, rowStride: Int, heads: Int, headDim: Int,
                       positions: [Int], inverse: Bool) {
        guard layout != .none, !positions.isEmpty, heads > 0 else { return }
        rotate(rows: rows, rowStride: rowStride, heads: heads, headDim: headDim, table: table(positions: positions),
               inverse: inverse)
    }

    /// Rotates the first `heads` heads of each of `table.count` rows, `rowStride` floats apart,
    /// in place, by the angles of `table` (negated when `inverse`). This is the one rotation
    /// kernel of the project: models rotate queries and keys with it and the codec removes
    /// and re-applies key rotations with it, so both agree bit for bit.
    public func rotate(rows: UnsafeMutablePointer<Float>, rowStride: Int, heads: Int, headDim: Int,
                       table: Table, inverse: Bool) {
        guard layout != .none, table.count > 0, heads > 0 else { return }
        precondition(table.pairs == rotaryDims / 2, "a rotation table of \(table.pairs) pairs for \(rotaryDims) rotary dims")
        let pairs = table.pairs
        let rowsBox = UncheckedSendable(rows)
        let layout = self.layout
        let sign: Float = inverse ? -1 : 1
        table.cos.withUnsafeBufferPointer { cb in
            table.sin.withUnsafeBufferPointer { sb in
                let cosBox = UncheckedSendable(cb.baseAddress!), sinBox = UncheckedSendable(sb.baseAddress!)
                Parallel.forEachRange(table.count, minimumPerTask: 64) { range in
                    for t in range {
                        let cosv = cosBox.value + t * pairs, sinv = sinBox.value + t * pairs
                        let row = rowsBox.value + t * rowStride
                        for h in 0..<heads {
                            let x = row + h * headDim
                            if layout == .interleaved {
                                for i in 0..<pairs {
                                    let a = x[2 * i], b = x[2 * i + 1], c = cosv[i], s = sign * sinv[i]
                                    x[2 * i] = a * c - b * s
                                    x[2 * i + 1] = a * s + b * c
                                }
                            } else {
                                for i in 0..<pairs {
                                    let a = x[i], b = x[i + pairs], c = cosv[i], s = sign * sinv[i]
                                    x[i] = a * c - b * s
                                    x[i + pairs] = a * s + b * c
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
