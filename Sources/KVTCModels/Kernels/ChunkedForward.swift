import KVTCNumerics

/// The chunking and row selection every family's `hiddenStates` shares.
enum ChunkedForward {
    /// Runs `tokens` in chunks of at most `chunk` through `forward` (which returns the
    /// residual stream of its chunk, `n x embedding`) and final-normalises the rows that
    /// `rows` asks for into a matrix.
    static func run(tokens: [Int], start: Int, chunk: Int, embedding e: Int, rows: LogitsRequest,
                    finalNorm: [Float], eps: Float,
                    forward: (_ tokens: ArraySlice<Int>, _ positions: [Int]) -> [Float]) -> Matrix {
        var out = Matrix(rows: rows == .all ? tokens.count : (rows == .last ? 1 : 0), columns: e)
        var done = 0
        while done < tokens.count {
            let n = min(chunk, tokens.count - done)
            let positions = Array((start + done)..<(start + done + n))
            let x = forward(tokens[done..<(done + n)], positions)
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
