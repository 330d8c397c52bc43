/// Carries a value that the compiler cannot prove `Sendable` (an unsafe pointer, a buffer,
/// a closure) into concurrently executed code such as ``Parallel`` loops.
///
/// The type checks nothing: whoever wraps a value promises that the concurrent uses touch
/// disjoint memory (each task writes its own rows, chunks or slots) or only read.
///
///     let rows = UncheckedSendable(buffer.baseAddress!)
///     Parallel.forEachRange(count) { range in for r in range { rows.value[r] = 0 } }
public struct UncheckedSendable<Value>: @unchecked Sendable {
    /// The wrapped value.
    public var value: Value

    /// Wraps `value`.
    @inlinable
    public init(_ value: Value) { self.value = value }
}
