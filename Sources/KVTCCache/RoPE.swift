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

    /// Rotates the first `heads` heads of each of `positions.count` rows, `rowStride` floats
    /// apart, in place. This is the one rotation kernel of the project: models rotate
    /// queries and keys with it and the codec removes and re-applies key rotations with it,
    /// so both agree bit for bit.
    ///
    /// Angles are computed in double precision (large positions stay accurate) and rounded
    /// to single precision once per position and pair.
    public func rotate(rows: UnsafeMutablePointer<Float>, rowStride: Int, heads: Int, headDim: Int,
                       positions: [Int], inverse: Bool) {
        guard layout != .none, !positions.isEmpty, heads > 0 else { return }
        let pairs = rotaryDims / 2
        let rowsBox = UncheckedSendable(rows)
        let freqs = (0..<pairs).map { pow(theta, -2.0 * Double($0) / Double(rotaryDims)) }
        let layout = self.layout
        Parallel.forEachRange(positions.count, minimumPerTask: 64) { range in
            var cosv = [Float](repeating: 0, count: pairs)
            var sinv = [Float](repeating: 0, count: pairs)
            for t in range {
                let pos = Double(positions[t])
                for i in 0..<pairs {
                    let a = pos * freqs[i]
                    cosv[i] = Float(cos(a))
                    sinv[i] = Float(inverse ? -sin(a) : sin(a))
                }
                let row = rowsBox.value + t * rowStride
                for h in 0..<heads {
                    let x = row + h * headDim
                    if layout == .interleaved {
                        for i in 0..<pairs {
                            let a = x[2 * i], b = x[2 * i + 1]
                            x[2 * i] = a * cosv[i] - b * sinv[i]
                            x[2 * i + 1] = a * sinv[i] + b * cosv[i]
                        }
                    } else {
                        for i in 0..<pairs {
                            let a = x[i], b = x[i + pairs]
                            x[i] = a * cosv[i] - b * sinv[i]
                            x[i + pairs] = a * sinv[i] + b * cosv[i]
                        }
                    }
                }
            }
        }
    }
}
