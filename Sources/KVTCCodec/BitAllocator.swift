/// Squared reconstruction error of every candidate group, measured on calibration rows.
///
/// Groups are aligned to their size (a group of size `s` starts at a multiple of `s`), as
/// in a buddy allocator: this keeps the table exact and affordable (one pass over the rows
/// per size) and still lets the allocator switch sizes wherever alignment allows.
public struct GroupErrorTable: Sendable {
    /// Number of components the plan may use.
    public let components: Int
    /// Allowed group sizes, ascending.
    public let sizes: [Int]
    /// Allowed types, including ``ComponentType/dropped``.
    public let types: [ComponentType]
    /// `errors[sizeIndex][typeIndex][groupIndex]`: summed squared error over all rows of the
    /// group of size `sizes[sizeIndex]` starting at `groupIndex * size`.
    public var errors: [[[Double]]]

    public init(components: Int, sizes: [Int], types: [ComponentType], errors: [[[Double]]]) {
        precondition(types.contains(.dropped), "the dropped type must be allowed")
        precondition(errors.count == sizes.count)
        self.components = components
        self.sizes = sizes
        self.types = types
        self.errors = errors
    }

    /// Error of one candidate group.
    public func error(size: Int, type: ComponentType, start: Int) -> Double {
        errors[sizes.firstIndex(of: size)!][types.firstIndex(of: type)!][start / size]
    }
}

/// Errors from bit allocation.
public enum BitAllocationError: Error, Equatable, CustomStringConvertible {
    case invalidBudget(Int)

    public var description: String {
        switch self {
        case .invalidBudget(let b): return "bit budget \(b) per token is not positive"
        }
    }
}

/// Optimal bit allocation by dynamic programming.
///
/// Chooses consecutive, size-aligned groups over the leading components, each dropped or
/// stored as int2/int4/int8 (+32 bits of shift and scale per token), so that the total
/// squared error is minimal subject to `bits per token <= budget`. The state is (components
/// covered, budget used); because every cost is a multiple of `g = gcd(costs)`, the budget
/// axis is counted in units of `g` bits and the solution is exactly optimal.
public enum BitAllocator {
    /// The optimal plan and its error (summed over calibration rows).
    public static func allocate(_ table: GroupErrorTable, budgetBitsPerToken budget: Int)
        throws(BitAllocationError) -> (plan: BitPlan, error: Double)
    {
        try allocate(table, budgetBitsPerToken: budget, errorTarget: nil)
    }

    /// The cheapest plan whose error (summed over calibration rows) is at most `target`, or
    /// the optimal one within `budget` bits per token when none is. One DP gives the least
    /// error of every budget up to `budget`, so the search costs one allocation.
    public static func cheapestPlan(_ table: GroupErrorTable, errorAtMost target: Double, budgetBitsPerToken budget: Int)
        throws(BitAllocationError) -> (plan: BitPlan, error: Double)
    {
        try allocate(table, budgetBitsPerToken: budget, errorTarget: target)
    }

    private static func allocate(_ table: GroupErrorTable, budgetBitsPerToken budget: Int, errorTarget: Double?)
        throws(BitAllocationError) -> (plan: BitPlan, error: Double)
    {
        guard budget > 0 else { throw .invalidBudget(budget) }
        let r = table.components
        var unit = 0
        for s in table.sizes {
            for t in table.types where t != .dropped { unit = gcd(unit, s * t.bits + BitPlan.metadataBitsPerGroup) }
        }
        unit = max(unit, 1)
        let units = budget / unit
        let width = units + 1
        // Candidate moves: (size index, type index, cost in units).
        struct Move { let size: Int; let sizeIndex: Int; let typeIndex: Int; let cost: Int }
        var moves: [Move] = []
        for (si, s) in table.sizes.enumerated().reversed() {
            for (ti, t) in table.types.enumerated() {
                let c = t == .dropped ? 0 : (s * t.bits + BitPlan.metadataBitsPerGroup) / unit
                if c <= units { moves.append(Move(size: s, sizeIndex: si, typeIndex: ti, cost: c)) }
            }
        }
        precondition(moves.count < 255)
        var best = [Double](repeating: 0, count: (r + 1) * width)
        var choice = [UInt8](repeating: 255, count: (r + 1) * width)
        best.withUnsafeMutableBufferPointer { f in
            choice.withUnsafeMutableBufferPointer { ch in
                for j in 1...max(r, 1) where r > 0 {
                    let row = f.baseAddress! + j * width
                    let chRow = ch.baseAddress! + j * width
                    row.update(repeating: .infinity, count: width)
                    for (mi, m) in moves.enumerated() {
                        let s = m.size
                        guard s <= j, (j - s) % s == 0 else { continue }
                        let e = table.errors[m.sizeIndex][m.typeIndex][(j - s) / s]
                        let prev = f.baseAddress! + (j - s) * width
                        let c = m.cost
                        if c > units { continue }
                        for u in c..<width {
                            let cand = prev[u - c] + e
                            if cand < row[u] {
                                row[u] = cand
                                chRow[u] = UInt8(mi)
                            }
                        }
                    }
                }
            }
        }
        // The budget to backtrack from: all of it, or the fewest units reaching the target.
        var end = units
        if let errorTarget, r > 0, let fewest = (0...units).first(where: { best[r * width + $0] <= errorTarget }) {
            end = fewest
        }
        // Backtrack from (r, end).
        var groups: [PlanGroup] = []
        var j = r, u = end
        while j > 0 {
            let mi = Int(choice[j * width + u])
            precondition(mi != 255, "no feasible plan")
            let m = moves[mi]
            let t = table.types[m.typeIndex]
            groups.append(PlanGroup(start: j - m.size, size: m.size, type: t))
            j -= m.size
            u -= m.cost
        }
        return (BitPlan(groups: groups), r == 0 ? 0 : best[r * width + end])
    }

    private static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
}
