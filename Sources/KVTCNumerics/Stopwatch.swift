import Dispatch

/// Monotonic wall-clock timing for benchmarks and reports.
public struct Stopwatch: Sendable {
    private let start: UInt64

    /// Starts timing now.
    public init() { start = DispatchTime.now().uptimeNanoseconds }

    /// Seconds since the stopwatch started.
    public var elapsed: Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

    /// Runs `body` and returns its result with the seconds it took.
    public static func time<T>(_ body: () throws -> T) rethrows -> (T, Double) {
        let s = Stopwatch()
        let r = try body()
        return (r, s.elapsed)
    }
}
