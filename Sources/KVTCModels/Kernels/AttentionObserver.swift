import Foundation

/// Watches attention while a model runs: the attention probabilities that observed queries
/// pay to every cached token, summed over layers, query heads and queries (what
/// attention-score eviction keeps tokens by), and optionally the second moment of every
/// query feature per layer (what makes an error in a cached key feature matter).
public final class AttentionObserver: @unchecked Sendable {
    private let lock = NSLock()
    private var accumulated: [Float]
    private var squares: [Double]
    private var queryCounts: [Int]
    private let queryWidth: Int

    /// An observer of attention to `tokens` cached tokens (0: no scores) that, with
    /// `queryLayers > 0`, also sums the squares of the `queryWidth` query features
    /// (`heads * headDim`, before RoPE) of each layer.
    public init(tokens: Int, queryLayers: Int = 0, queryWidth: Int = 0) {
        accumulated = [Float](repeating: 0, count: tokens)
        squares = [Double](repeating: 0, count: queryLayers * queryWidth)
        queryCounts = [Int](repeating: 0, count: queryLayers)
        self.queryWidth = queryLayers > 0 ? queryWidth : 0
    }

    /// The attention paid to each token so far.
    public var scores: [Float] { lock.withLock { accumulated } }

    /// Whether queries are recorded (the model then calls ``addQueries(layer:_:rows:stride:)``).
    public var recordsQueries: Bool { queryWidth > 0 }

    /// Per layer, the mean square of each query feature over the queries observed
    /// (`layers` arrays of `heads * headDim`; zeros before any query).
    public var queryMeanSquares: [[Double]] {
        lock.withLock {
            queryCounts.indices.map { l in
                let n = Double(max(1, queryCounts[l]))
                return (0..<queryWidth).map { squares[l * queryWidth + $0] / n }
            }
        }
    }

    /// Adds `rows` rows of unnormalised probabilities over `columns` keys starting at token
    /// `firstColumn` (row `i` scaled by `rowScale[i]`).
    func add(probabilities p: UnsafePointer<Float>, rows: Int, columns: Int, firstColumn: Int = 0, rowScale: [Float]) {
        guard !accumulated.isEmpty else { return }
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

    /// Adds `rows` queries of layer `layer` (each `heads * headDim` features, rows `stride`
    /// apart), before RoPE.
    public func addQueries(layer: Int, _ q: UnsafePointer<Float>, rows: Int, stride: Int) {
        guard queryWidth > 0, layer < queryCounts.count else { return }
        var local = [Double](repeating: 0, count: queryWidth)
        for r in 0..<rows {
            let row = q + r * stride
            for i in 0..<queryWidth { local[i] += Double(row[i] * row[i]) }
        }
        lock.withLock {
            for i in 0..<queryWidth { squares[layer * queryWidth + i] += local[i] }
            queryCounts[layer] += rows
        }
    }
}
