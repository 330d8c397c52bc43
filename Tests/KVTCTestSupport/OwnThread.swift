import Foundation

/// Runs `body` with a thread of its own as its task executor, and stops the thread after.
///
/// Swift concurrency's tasks and Dispatch's global queues share one pool of worker threads
/// sized to the cores (two on the CI machine). A test that blocks one of them (a blocking
/// socket read in an HTTP client, or minutes of calibration) takes it from every other test
/// in the process: the kvtc server's request handlers, the Redis client's continuations and
/// the event loops' callbacks then wait for it, and time-bound tests fail for want of a
/// thread, not for anything the code under test did. Blocking and long CPU-bound test work
/// runs here instead. The body stays in the test's task, so its expectations are recorded
/// against the test as usual.
public func onOwnThread<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    let executor = ThreadExecutor()
    defer { executor.stop() }
    return try await withTaskExecutorPreference(executor) { try await body() }
}

/// A task executor that runs every job on one dedicated thread, in order.
public final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    public init(name: String = "kvtc-test-thread") {
        let thread = Thread { self.run() } // holds the executor until the thread ends
        thread.name = name
        thread.stackSize = 8 << 20
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread end once it has run the jobs already enqueued.
    public func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty { condition.unlock(); return }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
