import Foundation
import KVTCNumerics

/// Bounds the generation requests the server holds: at most `concurrent` run, at most
/// `queue` wait for a slot; a request beyond that is refused at once (HTTP 429) rather than
/// queued without bound, and a waiting request gives up at its deadline or when its client
/// goes away.
public final class Admission: Sendable {
    /// Why a request was not admitted.
    public enum Refusal: Error, Equatable {
        /// Every slot is busy and the queue is full.
        case queueFull
        /// The request's deadline passed while it waited.
        case timedOut
        /// The request was cancelled (its client disconnected) while it waited.
        case cancelled
    }

    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var running = 0
        var waiting: [Waiter] = []
        var nextID: UInt64 = 0
        var refused = 0
    }

    /// Requests that may run at once.
    public let concurrent: Int
    /// Requests that may wait for a slot.
    public let queue: Int
    private let state = Locked(State())

    public init(concurrent: Int, queue: Int) {
        self.concurrent = max(1, concurrent)
        self.queue = max(0, queue)
    }

    /// Requests running and waiting now, and refused so far.
    public var load: (running: Int, waiting: Int, refused: Int) {
        state.withLock { ($0.running, $0.waiting.count, $0.refused) }
    }

    /// Takes a slot, waiting (until `deadline`) if all are busy and the queue has room.
    /// Pair with ``release()``.
    public func acquire(deadline: Date) async throws(Refusal) {
        enum Decision { case run, wait(UInt64), refuse }
        let decision: Decision = state.withLock { s in
            if s.running < concurrent && s.waiting.isEmpty { s.running += 1; return .run }
            if s.waiting.count < queue { s.nextID += 1; return .wait(s.nextID) }
            s.refused += 1
            return .refuse
        }
        guard case .wait(let id) = decision else {
            if case .refuse = decision { throw .queueFull }
            return
        }
        let timer = Task {
            try? await Task.sleep(for: .seconds(max(0, deadline.timeIntervalSinceNow)))
            self.abandon(id, Refusal.timedOut)
        }
        defer { timer.cancel() }
        do {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                    let admitted: Bool = state.withLock { s in
                        // A slot may have freed up between the decision and now.
                        if s.running < concurrent && s.waiting.isEmpty { s.running += 1; return true }
                        s.waiting.append(Waiter(id: id, continuation: c))
                        return false
                    }
                    if admitted { c.resume() }
                }
            } onCancel: {
                self.abandon(id, Refusal.cancelled)
            }
        } catch let refusal as Refusal {
            throw refusal
        } catch {
            throw .cancelled
        }
    }

    /// Removes a waiter that gives up (a no-op once it was admitted).
    private func abandon(_ id: UInt64, _ reason: Refusal) {
        let waiter: Waiter? = state.withLock { s in
            guard let i = s.waiting.firstIndex(where: { $0.id == id }) else { return nil }
            return s.waiting.remove(at: i)
        }
        waiter?.continuation.resume(throwing: reason)
    }

    /// Frees a slot, handing it to the longest-waiting request.
    public func release() {
        let next: Waiter? = state.withLock { s in
            if !s.waiting.isEmpty { return s.waiting.removeFirst() }
            s.running -= 1
            return nil
        }
        next?.continuation.resume()
    }
}
