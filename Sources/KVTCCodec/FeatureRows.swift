import KVTCCache
import KVTCNumerics

/// Turns caches into KVTC feature rows and back: one row per token concatenating every
/// layer and kv head, keys with RoPE removed, optionally scaled per feature.
public enum FeatureRows {
    /// Copies keys of `tokens` into `dst` (row-major, `tokens.count x p`) with RoPE removed.
    static func unrotatedKeys(of cache: KVCache, tokens: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        let p = cache.geometry.featuresPerToken
        cache.keys.withUnsafeBufferPointer { k in
            dst.update(from: k.baseAddress! + tokens.lowerBound * p, count: tokens.count * p)
        }
        cache.keyRotation.rotate(rows: dst, stride: p, columns: 0..<p, positions: Array(cache.positions[tokens]), inverse: true)
    }

    /// The features of `layers` (in that order, side by side) of `count` rows whose
    /// features are `featuresPerLayer` per layer, `stride` apart: the rows of the
    /// out-of-window transforms.
    static func selecting(layers: [Int], featuresPerLayer f: Int, of rows: UnsafePointer<Float>, count: Int, stride: Int) -> [Float] {
        let width = layers.count * f
        var out = [Float](repeating: 0, count: count * width)
        out.withUnsafeMutableBufferPointer { o in
            for t in 0..<count {
                for (j, l) in layers.enumerated() {
                    (o.baseAddress! + t * width + j * f).update(from: rows + t * stride + l * f, count: f)
                }
            }
        }
        return out
    }

    /// Rows for calibration from several caches: all tokens whose position is at least
    /// `skipPositionsBelow` (the attention sinks are not representative).
    public static func calibrationRows(_ caches: [KVCache], skipPositionsBelow sinks: Int, keys: Bool) -> (rows: [Float], count: Int) {
        guard let first = caches.first else { return ([], 0) }
        let p = first.geometry.featuresPerToken
        let ranges = caches.map { c -> Range<Int> in
            let lo = c.positions.firstIndex { $0 >= sinks } ?? c.tokenCount
            return lo..<c.tokenCount
        }
        let total = ranges.reduce(0) { $0 + $1.count }
        var rows = [Float](repeating: 0, count: total * p)
        rows.withUnsafeMutableBufferPointer { dst in
            var offset = 0
            for (c, r) in zip(caches, ranges) {
                if keys {
                    unrotatedKeys(of: c, tokens: r, into: dst.baseAddress! + offset * p)
                } else {
                    c.values.withUnsafeBufferPointer { v in
                        (dst.baseAddress! + offset * p).update(from: v.baseAddress! + r.lowerBound * p, count: r.count * p)
                    }
                }
                offset += r.count
            }
        }
        return (rows, total)
    }
}
