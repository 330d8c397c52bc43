/// How the components of one group are stored.
public enum ComponentType: Int, Codable, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// Not stored: decoded as zero (the calibration mean).
    case dropped = 0
    /// 2-bit uniform codes.
    case int2 = 2
    /// 3-bit uniform codes (beyond the paper).
    case int3 = 3
    /// 4-bit uniform codes.
    case int4 = 4
    /// 6-bit uniform codes (beyond the paper).
    case int6 = 6
    /// 8-bit uniform codes.
    case int8 = 8

    /// The paper's types: dropped, int2, int4 and 8-bit.
    public static let paperTypes: [ComponentType] = [.dropped, .int2, .int4, .int8]

    /// Bits per component.
    public var bits: Int { rawValue }
    /// Number of code levels minus one (the largest code).
    public var maxCode: Int { bits == 0 ? 0 : (1 << bits) - 1 }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { self == .dropped ? "drop" : "int\(bits)" }
}

/// A run of consecutive PCA components stored with one type and, per token, one shift and
/// one scale.
public struct PlanGroup: Hashable, Codable, Sendable {
    /// Index of the first component.
    public var start: Int
    /// Number of components.
    public var size: Int
    /// Storage type.
    public var type: ComponentType

    public init(start: Int, size: Int, type: ComponentType) {
        self.start = start
        self.size = size
        self.type = type
    }

    /// Bits this group costs per token: `size * bits` plus 32 bits of shift and scale
    /// when kept.
    public var bitsPerToken: Int { type == .dropped ? 0 : size * type.bits + BitPlan.metadataBitsPerGroup }
}

/// The result of bit allocation for one stream: which leading PCA components are stored
/// with which type, in groups of consecutive components.
public struct BitPlan: Hashable, Codable, Sendable, CustomStringConvertible {
    /// Shift and scale per kept group per token: two fp16 values.
    public static let metadataBitsPerGroup = 32
    /// Group sizes the design allows.
    public static let standardGroupSizes = [1, 16, 64, 256, 1024]

    /// Kept groups in component order (dropped components are simply absent).
    public var groups: [PlanGroup]

    public init(groups: [PlanGroup]) {
        self.groups = groups.filter { $0.type != .dropped }.sorted { $0.start < $1.start }
    }

    /// Bits per token, metadata included.
    public var bitsPerToken: Int { groups.reduce(0) { $0 + $1.bitsPerToken } }
    /// One past the last stored component: how many basis rows decoding needs.
    public var componentsUsed: Int { groups.map { $0.start + $0.size }.max() ?? 0 }
    /// Number of stored components.
    public var componentsKept: Int { groups.reduce(0) { $0 + $1.size } }

    /// Bytes per token of packed codes (without shift/scale).
    public var codeBitsPerToken: Int { groups.reduce(0) { $0 + $1.size * $1.type.bits } }
    /// Code bits per stored component on average (0 when none is stored).
    public var meanCodeBits: Double { componentsKept == 0 ? 0 : Double(codeBitsPerToken) / Double(componentsKept) }

    /// A compact text form: runs of equal-type groups, e.g. `int8 x 64, int4 x 512, ...`.
    public var description: String {
        var runs: [(ComponentType, Int)] = []
        var next = 0
        for g in groups {
            if g.start > next { runs.append((.dropped, g.start - next)) }
            if let last = runs.last, last.0 == g.type { runs[runs.count - 1].1 += g.size } else { runs.append((g.type, g.size)) }
            next = g.start + g.size
        }
        return runs.map { "\($0.0) x \($0.1)" }.joined(separator: ", ")
    }

    /// Checks that groups do not overlap and use allowed sizes and alignment.
    func validate(components: Int) -> Bool {
        var next = 0
        for g in groups {
            guard g.size > 0, g.start >= next, g.start + g.size <= components, g.type != .dropped else { return false }
            next = g.start + g.size
        }
        return true
    }
}
