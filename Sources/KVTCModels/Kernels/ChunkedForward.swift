import KVTCCache
import KVTCNumerics

/// The chunking and row selection every family's `hiddenStates` shares.
enum ChunkedForward {
    /// Runs `tokens` in chunks of at most `chunk` through `forward` (which appends its
    /// chunk to `cache` and returns the chunk's residual stream, `n x embedding`) and
    /// final-normalises the rows that `rows` asks for into a matrix.
    ///
    /// If a chunk fails, the cache is truncated back to what it held before the call.
    static func run(tokens: [Int], start: Int, chunk: Int, embedding e: Int, rows: LogitsRequest,
                    finalNorm: [Float], eps: Float, cache: inout KVCache,
                    forward: (_ tokens: ArraySlice<Int>, _ positions: [Int], _ cache: inout KVCache) throws(ModelError) -> [Float])
        throws(ModelError) -> Matrix {
        var out = Matrix(rows: rows == .all ? tokens.count : (rows == .last ? 1 : 0), columns: e)
        let before = cache.tokenCount
        var done = 0
        while done < tokens.count {
            let n = min(chunk, tokens.count - done)
            let positions = Array((start + done)..<(start + done + n))
            let x: [Float]
            do { x = try forward(tokens[done..<(done + n)], positions, &cache) } catch {
                cache.truncate(to: before)
                throw error
            }
            x.withUnsafeBufferPointer { xb in
                out.elements.withUnsafeMutableBufferPointer { ob in
                    let (src, dst, count): (Int, Int, Int)
                    switch rows {
                    case .none: return
                    case .all: (src, dst, count) = (0, done, n)
                    case .last:
                        guard done + n == tokens.count else { return }
                        (src, dst, count) = (n - 1, 0, 1)
                    }
                    finalNorm.withUnsafeBufferPointer { w in
                        for r in 0..<count {
                            FastMath.rmsNorm(xb.baseAddress! + (src + r) * e, weight: w.baseAddress!,
                                             eps: eps, out: ob.baseAddress! + (dst + r) * e, count: e)
                        }
                    }
                }
            }
            done += n
        }
        return out
    }
}

/// The f32 work buffers of one forward pass, zeroed, freed together.
final class ForwardBuffers {
    private var buffers: [UnsafeMutablePointer<Float>] = []

    /// A new zeroed buffer of `count` floats, valid while this object lives.
    func make(_ count: Int) -> UnsafeMutablePointer<Float> {
        let b = UnsafeMutablePointer<Float>.allocate(capacity: max(1, count))
        b.initialize(repeating: 0, count: max(1, count))
        buffers.append(b)
        return b
    }

    deinit { for b in buffers { b.deallocate() } }
}

extension KVCache {
    /// Runs `body` with mutable access to both streams, for a forward pass whose steps
    /// throw ``ModelError``.
    mutating func withMutableStreams<R>(
        forward body: (_ keys: UnsafeMutableBufferPointer<Float>, _ values: UnsafeMutableBufferPointer<Float>) throws(ModelError) -> R
    ) throws(ModelError) -> R {
        let result: Result<R, ModelError> = withMutableStreams({ k, v in
            do throws(ModelError) { return .success(try body(k, v)) } catch { return .failure(error) }
        })
        return try result.get()
    }
}
