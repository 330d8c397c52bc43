import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Data-parallel loops over both (or all) cores.
public enum Parallel {
    /// Number of worker threads to use: the online processor count.
    public static let coreCount: Int = {
        #if canImport(Glibc)
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
        return 2
        #endif
    }()

    /// Splits `0..<count` into contiguous ranges and runs `body` on each, concurrently.
    ///
    /// - Parameter minimumPerTask: below this many items per task the loop runs serially.
    public static func forEachRange(_ count: Int, minimumPerTask: Int = 1,
                                    _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let tasks = max(1, min(coreCount * 4, count / max(1, minimumPerTask)))
        if tasks == 1 { body(0..<count); return }
        let per = (count + tasks - 1) / tasks
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: tasks) { t in
                let lo = t * per
                let hi = min(count, lo + per)
                if lo < hi { box.value(lo..<hi) }
            }
        }
    }

    /// Runs `body(i)` for every `i` in `0..<count` concurrently.
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        guard count > 0 else { return }
        if count == 1 { body(0); return }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: count) { box.value($0) }
        }
    }
}
