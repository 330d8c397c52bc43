import KVTCStore

/// One slot of one backend, leased to one request at a time.
public struct SlotAddress: Sendable, Hashable, CustomStringConvertible {
    public var backend: Int
    public var slot: Int
    public var description: String { "backend \(backend) slot \(slot)" }
}

/// What kvtc knows a slot holds: the tokens it left there and whose they are.
struct SlotContents: Sendable {
    var tokens: [Int] = []
    var namespace: StoreNamespace = .shared
    /// Last use, for choosing which slot to overwrite.
    var lastUse: UInt64 = 0
}

/// A lease on a slot: the slot, what kvtc believes it holds, and how many of the prompt's
/// tokens it can reuse as it is.
struct SlotLease: Sendable {
    var address: SlotAddress
    var contents: SlotContents
    var reusable: Int
}

/// Which slots are free and what each holds; hands a slot to each request, preferring the
/// one that already holds the longest prefix of its prompt in its namespace (prefix-aware
/// routing), else the least recently used slot of a backend that is up.
actor SlotBook {
    private var contents: [SlotAddress: SlotContents] = [:]
    private var busy: Set<SlotAddress> = []
    private var down: Set<Int> = []
    private var clock: UInt64 = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private let slotsPerBackend: [Int]

    init(slotsPerBackend: [Int]) {
        self.slotsPerBackend = slotsPerBackend
        for (b, n) in slotsPerBackend.enumerated() { for s in 0..<n { contents[SlotAddress(backend: b, slot: s)] = SlotContents() } }
    }

    /// Leases the best free slot for `prompt` in `namespace` on a backend not in `avoiding`,
    /// waiting while every slot is busy. `nil` when every backend is down or avoided.
    func lease(prompt: [Int], namespace: StoreNamespace, avoiding: Set<Int> = []) async -> SlotLease? {
        while true {
            let usable = contents.keys.filter { !avoiding.contains($0.backend) && !down.contains($0.backend) }
            if usable.isEmpty {
                // Every backend is down: try them again rather than fail forever.
                let retry = contents.keys.filter { !avoiding.contains($0.backend) }
                if retry.isEmpty { return nil }
                down.subtract(retry.map(\.backend))
                continue
            }
            let free = usable.filter { !busy.contains($0) }
            if let best = free.max(by: { rank($0, prompt, namespace) < rank($1, prompt, namespace) }) {
                busy.insert(best)
                clock += 1
                let held = contents[best]!
                return SlotLease(address: best, contents: held, reusable: reusable(held, prompt, namespace))
            }
            await withCheckedContinuation { waiters.append($0) }
        }
    }

    private func reusable(_ c: SlotContents, _ prompt: [Int], _ namespace: StoreNamespace) -> Int {
        guard c.namespace == namespace else { return 0 }
        var n = 0
        while n < c.tokens.count, n < prompt.count, c.tokens[n] == prompt[n] { n += 1 }
        return n
    }

    /// A slot whose contents the prompt continues (it reuses at least half of what the slot
    /// holds) first, the longest such prefix first; then empty slots, then the least recently
    /// used. A slot that shares only a short prefix (a system prompt) with the request is not
    /// worth overwriting the conversation it holds.
    private func rank(_ a: SlotAddress, _ prompt: [Int], _ namespace: StoreNamespace) -> (Int, Int, Int) {
        let c = contents[a]!
        let shared = reusable(c, prompt, namespace)
        let continues = shared > 0 && 2 * shared >= c.tokens.count
        return (continues ? shared : 0, c.tokens.isEmpty ? 1 : 0, -Int(c.lastUse))
    }

    /// Returns a lease; the slot now holds `holding` (nil: unknown, treated as empty).
    func release(_ address: SlotAddress, holding: SlotContents?) {
        var c = holding ?? SlotContents()
        clock += 1
        c.lastUse = clock
        contents[address] = c
        busy.remove(address)
        let ready = waiters
        waiters.removeAll()
        for w in ready { w.resume() }
    }

    /// Marks a backend down (its slots' contents are forgotten) or up.
    func setDown(_ backend: Int, _ isDown: Bool) {
        if isDown {
            down.insert(backend)
            for a in contents.keys where a.backend == backend { contents[a] = SlotContents() }
        } else {
            down.remove(backend)
        }
    }

    /// Backend indices, those not marked down first.
    func backendsByHealth() -> [Int] {
        let all = Array(slotsPerBackend.indices)
        return all.filter { !down.contains($0) } + all.filter { down.contains($0) }
    }

    /// Forgets what `address` holds (the server restarted or the slot was used by others).
    func forget(_ address: SlotAddress) { contents[address] = SlotContents() }
}
