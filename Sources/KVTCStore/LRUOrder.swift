/// Recency order of keys: O(1) touch, remove and least-recent lookup (an intrusive doubly
/// linked list over arrays, indexed by a dictionary).
struct LRUOrder<Key: Hashable> {
    private var slots: [Key: Int] = [:]
    private var keys: [Key?] = []
    private var prev: [Int] = []
    private var next: [Int] = []
    private var free: [Int] = []
    /// Least recently used slot, or -1.
    private var head = -1
    /// Most recently used slot, or -1.
    private var tail = -1

    var count: Int { slots.count }

    func contains(_ key: Key) -> Bool { slots[key] != nil }

    /// Marks `key` most recently used, inserting it if new.
    mutating func touch(_ key: Key) {
        if let s = slots[key] {
            unlink(s)
            link(s)
            return
        }
        let s: Int
        if let f = free.popLast() {
            s = f
            keys[s] = key
        } else {
            s = keys.count
            keys.append(key)
            prev.append(-1)
            next.append(-1)
        }
        slots[key] = s
        link(s)
    }

    /// Marks `key` least recently used (no-op when absent).
    mutating func demote(_ key: Key) {
        guard let s = slots[key], s != head else { return }
        unlink(s)
        prev[s] = -1
        next[s] = head
        if head >= 0 { prev[head] = s }
        head = s
        if tail < 0 { tail = s }
    }

    mutating func remove(_ key: Key) {
        guard let s = slots.removeValue(forKey: key) else { return }
        unlink(s)
        keys[s] = nil
        free.append(s)
    }

    /// The least recently used key.
    var leastRecent: Key? { head >= 0 ? keys[head] : nil }

    /// Keys from least to most recently used.
    var ordered: [Key] {
        var out: [Key] = []
        var s = head
        while s >= 0 { out.append(keys[s]!); s = next[s] }
        return out
    }

    private mutating func unlink(_ s: Int) {
        let p = prev[s], n = next[s]
        if p >= 0 { next[p] = n } else { head = n }
        if n >= 0 { prev[n] = p } else { tail = p }
        prev[s] = -1
        next[s] = -1
    }

    private mutating func link(_ s: Int) {
        prev[s] = tail
        next[s] = -1
        if tail >= 0 { next[tail] = s }
        tail = s
        if head < 0 { head = s }
    }
}
