import KVTCNumerics
import Testing
import KVTCTestSupport
@testable import KVTCCodec

/// Exhaustive search over every aligned partition, for comparison with the DP.
private func bruteForce(_ table: GroupErrorTable, budget: Int) -> Double {
    var best = Double.infinity
    func go(_ i: Int, _ bits: Int, _ err: Double) {
        if bits > budget { return }
        if i == table.components { best = min(best, err); return }
        for s in table.sizes where i % s == 0 && i + s <= table.components {
            for t in table.types {
                let cost = t == .dropped ? 0 : s * t.bits + BitPlan.metadataBitsPerGroup
                go(i + s, bits + cost, err + table.error(size: s, type: t, start: i))
            }
        }
    }
    go(0, 0, 0)
    return best
}

private func randomTable(components: Int, sizes: [Int], seed: UInt64) -> GroupErrorTable {
    var rng = SplitMix64(seed: seed)
    // Errors decrease with bits and grow with the component's variance, as in real tables,
    // but with noise so that many plans compete.
    let variance = (0..<components).map { _ in Double.random(in: 0.1...10, using: &rng) }
    let types = ComponentType.allCases
    let errors = sizes.map { s in
        types.map { t in
            (0..<(components / s)).map { g -> Double in
                let v = variance[(g * s)..<(g * s + s)].reduce(0, +)
                let factor: Double = t == .dropped ? 1 : Double.random(in: 0.5...1.5, using: &rng) / Double(1 << (2 * t.bits))
                return v * factor
            }
        }
    }
    return GroupErrorTable(components: components, sizes: sizes, types: types, errors: errors)
}

@Suite struct BitAllocatorTests {
    @Test(arguments: 0..<12)
    func dynamicProgramIsOptimal(seed: Int) throws {
        let sizes = seed % 2 == 0 ? [1, 2, 4] : [1, 4]
        let table = randomTable(components: 8, sizes: sizes, seed: UInt64(seed))
        for budget in [34, 70, 100, 150, 220, 400] {
            let (plan, error) = try BitAllocator.allocate(table, budgetBitsPerToken: budget)
            let expected = bruteForce(table, budget: budget)
            #expect(abs(error - expected) <= 1e-9 * max(1, expected), "budget \(budget)")
            #expect(plan.bitsPerToken <= budget)
            // The plan's own error, recomputed from the table, is the reported one.
            var recomputed = 0.0
            var covered = [Bool](repeating: false, count: 8)
            for g in plan.groups {
                recomputed += table.error(size: g.size, type: g.type, start: g.start)
                for i in g.start..<(g.start + g.size) { covered[i] = true }
            }
            for i in 0..<8 where !covered[i] { recomputed += table.error(size: 1, type: .dropped, start: i) }
            #expect(abs(recomputed - error) <= 1e-9 * max(1, error))
        }
    }

    @Test func standardSizesOptimalOnLargerProblem() throws {
        // 16 components with sizes 1 and 16 and two types keeps brute force at 2^16 plans.
        let full = randomTable(components: 16, sizes: [1, 16], seed: 99)
        let keep: [ComponentType] = [.dropped, .int4]
        let table = GroupErrorTable(components: 16, sizes: [1, 16], types: keep,
                                    errors: full.errors.map { perType in keep.map { perType[ComponentType.allCases.firstIndex(of: $0)!] } })
        for budget in [64, 200, 300] {
            let (_, error) = try BitAllocator.allocate(table, budgetBitsPerToken: budget)
            #expect(abs(error - bruteForce(table, budget: budget)) <= 1e-9 * max(1, error))
        }
    }

    @Test func rejectsNonPositiveBudget() {
        let table = randomTable(components: 4, sizes: [1], seed: 1)
        #expect(throws: BitAllocationError.invalidBudget(0)) { try BitAllocator.allocate(table, budgetBitsPerToken: 0) }
    }

    @Test func moreBudgetNeverHurts() throws {
        let table = randomTable(components: 64, sizes: [1, 16, 64], seed: 5)
        var last = Double.infinity
        for budget in stride(from: 40, through: 1200, by: 40) {
            let e = try BitAllocator.allocate(table, budgetBitsPerToken: budget).error
            #expect(e <= last + 1e-12)
            last = e
        }
    }
}
