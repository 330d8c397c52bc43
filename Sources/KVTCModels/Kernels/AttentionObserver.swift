import Foundation

/// Accumulates the attention probabilities that observed queries pay to every cached token,
/// summed over layers, query heads and queries (what attention-score eviction keeps tokens by).
public final class AttentionObserver: @unchecked Sendable {
    private let lock = NSLock()
    private var accumulated: [Float]

    /// An observer of attention to `tokens` cached tokens.
    public init(tokens: Int) { accumulated = [Float](repeating: 0, count: tokens) }

    /// The attention paid to each token so far.
    public var scores: [Float] { lock.withLock { accumulated } }

    /// Adds `rows` rows of unnormalised probabilities over `columns` keys starting at token
    /// `firstColumn` (row `i` scaled by `rowScale[i]`).
    func add(probabilities p: UnsafePointer<Float>, rows: Int, columns: Int, firstColumn: Int = 0, rowScale: [Float]) {
        var local = [Float](repeating: 0, count: columns)
        for r in 0..<rows {
            let s = p + r * columns, k = rowScale[r]
            for j in 0..<columns { local[j] += s[j] * k }
        }
        lock.withLock {
            let end = min(firstColumn + columns, accumulated.count)
            guard firstColumn < end else { return }
            for j in firstColumn..<end { accumulated[j] += local[j - firstColumn] }
        }
    }
}
