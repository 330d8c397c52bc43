import CDNNL
import Foundation

/// Which library multiplies the codec's matrices.
public enum GEMMBackend: String, Sendable, CaseIterable, CustomStringConvertible {
    /// OpenBLAS `sgemm` in f32: the reference path, and the path where oneDNN finds no
    /// bfloat16 unit.
    case openblas
    /// oneDNN `matmul` with bfloat16 operands and f32 accumulation and results, on the
    /// CPU's AVX-512 BF16 (or AMX) units.
    case onednn

    public var description: String { rawValue }

    /// The backend a compressor gets unless told otherwise: `KVTC_BACKEND` if set, else
    /// oneDNN where it dispatches to a bfloat16 unit (it measures about twice OpenBLAS's
    /// f32 rate there: `kvtc bench codec`), else OpenBLAS.
    public static var preferred: GEMMBackend {
        if let b = selection.current { return b }
        if let name = ProcessInfo.processInfo.environment["KVTC_BACKEND"], let b = GEMMBackend(rawValue: name) { return b }
        return OneDNN.hasBF16Unit && OneDNN.canMultiplyBF16 ? .onednn : .openblas
    }

    private static let selection = Locked<GEMMBackend?>(nil)

    /// Makes `backend` the ``preferred`` one for the rest of the process (`nil`: back to the
    /// environment's or the machine's choice); the command line's `--backend`.
    public static func select(_ backend: GEMMBackend?) { selection.withLock { $0 = backend } }
}

/// An error oneDNN returned (a status other than success).
public struct OneDNNError: Error, CustomStringConvertible {
    public let call: String
    public let status: Int
    public var description: String { "oneDNN \(call) failed with status \(status)" }
}

/// How a oneDNN call runs.
public enum OneDNNExecution: Sendable {
    /// On the shared stream, one call at a time, each with every OpenMP thread.
    case serialized
    /// On the calling thread alone, alongside other such calls from other threads: the
    /// caller is inside ``OneDNN/singleThreaded(_:)``.
    case concurrent
}

/// The oneDNN engine, stream and primitive caches behind ``BF16Matrix``.
///
/// Primitives are created once per shape and reused. Serialized executions use every
/// OpenMP thread one call at a time; concurrent ones run single-threaded on their callers'
/// threads, each on its own stream.
public enum OneDNN {
    private final class Context: @unchecked Sendable {
        var engine: dnnl_engine_t?
        var stream: dnnl_stream_t?
        var matmuls: [MatmulShape: dnnl_primitive_t] = [:]
        var reorders: [ReorderShape: dnnl_primitive_t] = [:]
        /// Single-threaded primitives for ``Execution/concurrent`` calls, never evicted
        /// (another thread may be running one).
        var concurrentMatmuls: [MatmulShape: dnnl_primitive_t] = [:]
        var concurrentReorders: [ReorderShape: dnnl_primitive_t] = [:]
        let lock = NSLock()

        init() {
            guard dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success,
                  dnnl_stream_create(&stream, engine, dnnl_stream_default_flags.rawValue) == dnnl_success else {
                engine = nil
                stream = nil
                return
            }
        }
    }

    private static let context = Context()

    /// The element type of a matmul's `A` and `B` (the product is f32 either way).
    enum MatmulOperands: Hashable {
        /// bfloat16 (AVX-512 BF16 or AMX).
        case bf16
        /// Signed 8-bit integers, summed exactly in 32 bits (VNNI).
        case int8

        var type: dnnl_data_type_t { self == .bf16 ? dnnl_bf16 : dnnl_s8 }
    }

    struct MatmulShape: Hashable {
        var operands: MatmulOperands = .bf16
        var m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int, transposedB: Bool
        /// `B` in the packed layout of ``packedLayout(n:k:)`` (then `ldb` and `transposedB` are unused).
        var packedB: Bool
        /// `C += A B` rather than `C = A B`.
        var accumulate: Bool
    }

    /// How the `B` operand of ``matmul`` lies in memory.
    enum MatrixBLayout {
        /// Row-major with row stride `ldb`: `k x n` as stored, or `n x k` when `transposed`.
        case rowMajor(ldb: Int, transposed: Bool)
        /// A `k x n` matrix in oneDNN's blocked layout for it (``packedLayout(n:k:)``).
        case packed(dnnl_memory_desc_t)
    }

    /// Primitives kept per table at most; past it the table is emptied (prompts of many
    /// lengths would otherwise grow it without bound).
    static let primitiveLimit = 256

    struct ReorderShape: Hashable {
        var rows: Int, columns: Int, ld: Int, toBF16: Bool
    }

    /// Runs `body` with the calling thread's OpenMP team limited to that thread, so the
    /// oneDNN calls it makes with ``OneDNNExecution/concurrent`` run on it alone.
    public static func singleThreaded<R>(_ body: () throws -> R) rethrows -> R {
        let previous = omp_get_max_threads()
        omp_set_num_threads(1)
        defer { omp_set_num_threads(previous) }
        return try body()
    }

    /// The instruction set oneDNN dispatches to on this CPU (after `ONEDNN_MAX_CPU_ISA`).
    public static var isa: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_avx512_core_amx: return "AVX-512 + AMX"
        case dnnl_cpu_isa_avx512_core_bf16: return "AVX-512 BF16"
        case dnnl_cpu_isa_avx512_core_vnni: return "AVX-512 VNNI"
        case dnnl_cpu_isa_avx512_core: return "AVX-512"
        case dnnl_cpu_isa_avx2_vnni: return "AVX2 VNNI"
        case dnnl_cpu_isa_avx2: return "AVX2"
        default: return "older than AVX2"
        }
    }

    /// Whether oneDNN computes bfloat16 products in hardware here (AVX-512 BF16 or AMX).
    public static var hasBF16Unit: Bool {
        let i = dnnl_get_effective_cpu_isa()
        return context.engine != nil && (i == dnnl_cpu_isa_avx512_core_bf16 || i == dnnl_cpu_isa_avx512_core_amx)
    }

    /// Whether oneDNN multiplies 8-bit integers with AVX-512 VNNI's dot-product instructions
    /// here (AVX-512 VNNI, BF16 or AMX): exact 32-bit sums at about twice its bfloat16 rate
    /// (2.1 against 1.04 TOP/s on the restore's products here). Below it oneDNN's int8 matmul
    /// saturates 16-bit partial sums (seen with `ONEDNN_MAX_CPU_ISA=AVX2`); AVX2 VNNI is left
    /// out because it could not be checked on a machine that has it.
    public static var hasInt8Unit: Bool {
        let i = dnnl_get_effective_cpu_isa()
        return context.engine != nil && [dnnl_cpu_isa_avx512_core_vnni, dnnl_cpu_isa_avx512_core_bf16,
                                         dnnl_cpu_isa_avx512_core_amx].contains(i)
    }

    /// Whether oneDNN has a bfloat16 matmul for this ISA at all (it has none below
    /// AVX-512): where it has not, ``GEMMBackend/onednn`` falls back to OpenBLAS's f32.
    public static let canMultiplyBF16: Bool = {
        guard let one = try? BF16Matrix([1], rows: 1, columns: 1) else { return false }
        var x: Float = 2, y: Float = 0
        return (try? one.multiply(&x, rows: 1, lda: 1, transposed: true, into: &y, ldc: 1)) != nil && y == 2
    }()

    static func check(_ status: dnnl_status_t, _ call: String) throws(OneDNNError) {
        guard status == dnnl_success else { throw OneDNNError(call: call, status: Int(status.rawValue)) }
    }

    /// A 2-D memory descriptor with explicit strides.
    static func descriptor(rows: Int, columns: Int, rowStride: Int, columnStride: Int, type: dnnl_data_type_t) throws(OneDNNError) -> dnnl_memory_desc_t {
        var md = dnnl_memory_desc_t()
        let dims: [Int64] = [Int64(rows), Int64(columns)]
        let strides: [Int64] = [Int64(rowStride), Int64(columnStride)]
        try check(dnnl_memory_desc_init_by_strides(&md, 2, dims, type, strides), "memory_desc_init_by_strides")
        return md
    }

    /// The primitive cached under `shape` in `table`, or a new one made from the primitive
    /// descriptor `describe` fills in (destroyed once the primitive exists) and cached.
    /// Callers hold the context's lock.
    private static func cachedPrimitive<Shape: Hashable>(_ shape: Shape, in table: ReferenceWritableKeyPath<Context, [Shape: dnnl_primitive_t]>,
                                                         describe: (inout dnnl_primitive_desc_t?) throws(OneDNNError) -> Void) throws(OneDNNError) -> dnnl_primitive_t {
        let c = context
        if let p = c[keyPath: table][shape] { return p }
        if c[keyPath: table].count >= primitiveLimit {
            for p in c[keyPath: table].values { dnnl_primitive_destroy(p) }
            c[keyPath: table].removeAll()
        }
        var pd: dnnl_primitive_desc_t?
        defer { if pd != nil { dnnl_primitive_desc_destroy(pd) } }
        try describe(&pd)
        var p: dnnl_primitive_t?
        try check(dnnl_primitive_create(&p, pd), "primitive_create")
        c[keyPath: table][shape] = p!
        return p!
    }

    /// Runs the primitive for `shape` (made by `describe` from the attributes it is given
    /// when not cached) on `bindings`, as `execution` says: serialized under the lock on the
    /// shared stream, or concurrently on a stream of its own with a scratchpad of its own
    /// (the library's shared one is not safe across threads; a primitive beyond the cache's
    /// limit is made for the call and destroyed after it).
    private static func run<Shape: Hashable>(_ shape: Shape, serialized: ReferenceWritableKeyPath<Context, [Shape: dnnl_primitive_t]>,
                                             concurrent: ReferenceWritableKeyPath<Context, [Shape: dnnl_primitive_t]>,
                                             execution: OneDNNExecution,
                                             describe: (inout dnnl_primitive_desc_t?, dnnl_primitive_attr_t?) throws(OneDNNError) -> Void,
                                             bindings: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer)]) throws(OneDNNError) {
        let c = context
        switch execution {
        case .serialized:
            c.lock.lock()
            defer { c.lock.unlock() }
            guard c.engine != nil else { throw OneDNNError(call: "engine_create", status: -1) }
            let primitive = try cachedPrimitive(shape, in: serialized) { (pd) throws(OneDNNError) in
                var attributes: dnnl_primitive_attr_t?
                try check(dnnl_primitive_attr_create(&attributes), "primitive_attr_create")
                defer { dnnl_primitive_attr_destroy(attributes) }
                try describe(&pd, attributes)
            }
            try execute(primitive, bindings, on: c.stream)
        case .concurrent:
            c.lock.lock()
            guard c.engine != nil else { c.lock.unlock(); throw OneDNNError(call: "engine_create", status: -1) }
            var primitive = c[keyPath: concurrent][shape]
            var owned = false
            if primitive == nil {
                var pd: dnnl_primitive_desc_t?
                var attributes: dnnl_primitive_attr_t?
                defer {
                    if pd != nil { dnnl_primitive_desc_destroy(pd) }
                    if attributes != nil { dnnl_primitive_attr_destroy(attributes) }
                }
                do throws(OneDNNError) {
                    try check(dnnl_primitive_attr_create(&attributes), "primitive_attr_create")
                    try check(dnnl_primitive_attr_set_scratchpad_mode(attributes, dnnl_scratchpad_mode_user), "primitive_attr_set_scratchpad_mode")
                    try describe(&pd, attributes)
                    try check(dnnl_primitive_create(&primitive, pd), "primitive_create")
                } catch { c.lock.unlock(); throw error }
                if c[keyPath: concurrent].count < primitiveLimit { c[keyPath: concurrent][shape] = primitive } else { owned = true }
            }
            c.lock.unlock()
            defer { if owned { dnnl_primitive_destroy(primitive) } }
            var bindings = bindings
            var pd: const_dnnl_primitive_desc_t?
            try check(dnnl_primitive_get_primitive_desc(primitive, &pd), "primitive_get_primitive_desc")
            var scratchpad: UnsafeMutableRawPointer?
            defer { scratchpad?.deallocate() }
            if let md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) {
                var layout = md.pointee
                let bytes = dnnl_memory_desc_get_size(&layout)
                if bytes > 0 {
                    scratchpad = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
                    bindings.append((DNNL_ARG_SCRATCHPAD, layout, scratchpad!))
                }
            }
            var stream: dnnl_stream_t?
            try check(dnnl_stream_create(&stream, c.engine, dnnl_stream_default_flags.rawValue), "stream_create")
            defer { dnnl_stream_destroy(stream) }
            try execute(primitive!, bindings, on: stream)
        }
    }

    /// Runs `primitive` on `pointers` bound to `descriptors` under `argument` indices.
    private static func execute(_ primitive: dnnl_primitive_t, _ bindings: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer)],
                                on stream: dnnl_stream_t?) throws(OneDNNError) {
        let c = context
        var memories: [dnnl_memory_t?] = []
        defer { for m in memories { dnnl_memory_destroy(m) } }
        var args: [dnnl_exec_arg_t] = []
        for (arg, desc, pointer) in bindings {
            var md = desc
            var memory: dnnl_memory_t?
            try check(dnnl_memory_create(&memory, &md, c.engine, pointer), "memory_create")
            memories.append(memory)
            args.append(dnnl_exec_arg_t(arg: arg, memory: memory))
        }
        try check(dnnl_primitive_execute(primitive, stream, Int32(args.count), args), "primitive_execute")
        try check(dnnl_stream_wait(stream), "stream_wait")
    }

    /// Converts a row-major `rows x columns` matrix (row stride `ld`) between f32 and a
    /// dense bf16 one (row stride `columns`), with oneDNN's reorder (round to nearest even).
    public static func convert(rows: Int, columns: Int, ld: Int, toBF16: Bool, from source: UnsafeRawPointer,
                               to destination: UnsafeMutableRawPointer,
                               execution: OneDNNExecution = .serialized) throws(OneDNNError) {
        guard rows > 0, columns > 0 else { return }
        let c = context
        let f32 = try descriptor(rows: rows, columns: columns, rowStride: toBF16 ? ld : columns, columnStride: 1, type: dnnl_f32)
        let bf16 = try descriptor(rows: rows, columns: columns, rowStride: toBF16 ? columns : ld, columnStride: 1, type: dnnl_bf16)
        let (src, dst) = toBF16 ? (f32, bf16) : (bf16, f32)
        let shape = ReorderShape(rows: rows, columns: columns, ld: ld, toBF16: toBF16)
        try run(shape, serialized: \.reorders, concurrent: \.concurrentReorders, execution: execution,
                describe: { (pd, attributes) throws(OneDNNError) in
                    var s = src, d = dst
                    try check(dnnl_reorder_primitive_desc_create(&pd, &s, c.engine, &d, c.engine, attributes), "reorder_primitive_desc_create")
                },
                bindings: [(DNNL_ARG_SRC, src, UnsafeMutableRawPointer(mutating: source)), (DNNL_ARG_DST, dst, destination)])
    }

    /// The blocked layout oneDNN's bf16 matmul reads a `k x n` `B` fastest in (it is the
    /// same for every `m`; measured here, about 1.1 TFLOP/s at `m >= 512` against 0.9 from
    /// a row-major `B`, and a third less time at `m = 1`).
    /// The int8 one (`operands: .int8`) includes what the product needs to correct for signed
    /// `A` rows, which the reorder into it computes.
    static func packedLayout(n: Int, k: Int, operands: MatmulOperands = .bf16) throws(OneDNNError) -> dnnl_memory_desc_t {
        let c = context
        c.lock.lock()
        defer { c.lock.unlock() }
        guard c.engine != nil else { throw OneDNNError(call: "engine_create", status: -1) }
        var a = try descriptor(rows: 1, columns: k, rowStride: k, columnStride: 1, type: operands.type)
        var d = try descriptor(rows: 1, columns: n, rowStride: n, columnStride: 1, type: dnnl_f32)
        var b = dnnl_memory_desc_t()
        let dims: [Int64] = [Int64(k), Int64(n)]
        try check(dnnl_memory_desc_init_by_tag(&b, 2, dims, operands.type, dnnl_format_tag_any), "memory_desc_init_by_tag")
        var desc = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc, &a, &b, nil, &d), "matmul_desc_init")
        var pd: dnnl_primitive_desc_t?
        try check(dnnl_primitive_desc_create(&pd, &desc, nil, c.engine, nil), "primitive_desc_create(matmul)")
        defer { dnnl_primitive_desc_destroy(pd) }
        guard let layout = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0) else {
            throw OneDNNError(call: "primitive_desc_query_md(weights)", status: -1)
        }
        return layout.pointee
    }

    /// A matrix packed for a matmul's `B`: new 64-byte-aligned storage (its owner deallocates
    /// it), the packed layout and its size in bytes.
    struct PackedMatrix {
        let storage: UnsafeMutableRawPointer
        let layout: dnnl_memory_desc_t
        let byteCount: Int
    }

    /// A `k x n` matrix `B` (`values`, laid out as `from` says) packed for a matmul with `operands`.
    static func pack<Element>(_ values: [Element], from: dnnl_memory_desc_t, n: Int, k: Int,
                              operands: MatmulOperands) throws(OneDNNError) -> PackedMatrix {
        let layout = try packedLayout(n: n, k: k, operands: operands)
        var md = layout
        let byteCount = dnnl_memory_desc_get_size(&md)
        let storage = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 64)
        // `withUnsafeBytes` does not carry typed throws: the failure comes out as a value.
        let failure: OneDNNError? = values.withUnsafeBytes { v in
            do throws(OneDNNError) { try reorder(v.baseAddress!, from: from, into: storage, to: layout); return nil } catch { return error }
        }
        if let failure { storage.deallocate(); throw failure }
        return PackedMatrix(storage: storage, layout: layout, byteCount: byteCount)
    }

    /// Reorders `source` (described by `from`) into `destination` (described by `to`): a
    /// conversion between f32 and bf16, a change of layout, or both.
    static func reorder(_ source: UnsafeRawPointer, from: dnnl_memory_desc_t, into destination: UnsafeMutableRawPointer,
                        to: dnnl_memory_desc_t) throws(OneDNNError) {
        let c = context
        c.lock.lock()
        defer { c.lock.unlock() }
        guard c.engine != nil else { throw OneDNNError(call: "engine_create", status: -1) }
        var pd: dnnl_primitive_desc_t?
        var s = from, d = to
        try check(dnnl_reorder_primitive_desc_create(&pd, &s, c.engine, &d, c.engine, nil), "reorder_primitive_desc_create")
        defer { dnnl_primitive_desc_destroy(pd) }
        var p: dnnl_primitive_t?
        try check(dnnl_primitive_create(&p, pd), "primitive_create")
        defer { dnnl_primitive_destroy(p) }
        try execute(p!, [(DNNL_ARG_SRC, from, UnsafeMutableRawPointer(mutating: source)), (DNNL_ARG_DST, to, destination)],
                    on: c.stream)
    }

    /// `C (m x n, f32, row stride ldc) = A (m x k, dense) * B` (`+ C` when `accumulate`),
    /// with `A` and `B` of type `operands` and `B` as `layout` says.
    static func matmul(m: Int, n: Int, k: Int, a: UnsafeRawPointer, b: UnsafeRawPointer, layout: MatrixBLayout,
                       c cPointer: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false,
                       operands: MatmulOperands = .bf16,
                       execution: OneDNNExecution = .serialized) throws(OneDNNError) {
        let c = context
        let aMD = try descriptor(rows: m, columns: k, rowStride: k, columnStride: 1, type: operands.type)
        let bMD: dnnl_memory_desc_t
        let shape: MatmulShape
        switch layout {
        case .rowMajor(let ldb, let transposed):
            bMD = transposed ? try descriptor(rows: k, columns: n, rowStride: 1, columnStride: ldb, type: operands.type)
                             : try descriptor(rows: k, columns: n, rowStride: ldb, columnStride: 1, type: operands.type)
            shape = MatmulShape(operands: operands, m: m, n: n, k: k, lda: k, ldb: ldb, ldc: ldc, transposedB: transposed, packedB: false,
                                accumulate: accumulate)
        case .packed(let md):
            bMD = md
            shape = MatmulShape(operands: operands, m: m, n: n, k: k, lda: k, ldb: 0, ldc: ldc, transposedB: false, packedB: true,
                                accumulate: accumulate)
        }
        let cMD = try descriptor(rows: m, columns: n, rowStride: ldc, columnStride: 1, type: dnnl_f32)
        try run(shape, serialized: \.matmuls, concurrent: \.concurrentMatmuls, execution: execution,
                describe: { (pd, attributes) throws(OneDNNError) in
                    var desc = dnnl_matmul_desc_t()
                    var a = aMD, b = bMD, d = cMD
                    try check(dnnl_matmul_desc_init(&desc, &a, &b, nil, &d), "matmul_desc_init")
                    if accumulate {
                        var ops: dnnl_post_ops_t?
                        try check(dnnl_post_ops_create(&ops), "post_ops_create")
                        defer { dnnl_post_ops_destroy(ops) }
                        try check(dnnl_post_ops_append_sum(ops, 1), "post_ops_append_sum")
                        try check(dnnl_primitive_attr_set_post_ops(attributes, ops), "primitive_attr_set_post_ops")
                    }
                    try check(dnnl_primitive_desc_create(&pd, &desc, attributes, c.engine, nil), "primitive_desc_create(matmul)")
                },
                bindings: [(DNNL_ARG_SRC, aMD, UnsafeMutableRawPointer(mutating: a)),
                           (DNNL_ARG_WEIGHTS, bMD, UnsafeMutableRawPointer(mutating: b)),
                           (DNNL_ARG_DST, cMD, UnsafeMutableRawPointer(cPointer))])
    }

    /// `C (m x n, f32, row stride ldc) = A (m x k, bf16, dense) * op(B)`, with `B` bf16
    /// row-major with row stride `ldb`: `k x n` as stored, or `n x k` when `transposedB`.
    public static func multiplyBF16(m: Int, n: Int, k: Int, a: UnsafeRawPointer, b: UnsafeRawPointer, ldb: Int, transposedB: Bool,
                                    c: UnsafeMutablePointer<Float>, ldc: Int,
                                    execution: OneDNNExecution = .serialized) throws(OneDNNError) {
        try matmul(m: m, n: n, k: k, a: a, b: b, layout: .rowMajor(ldb: ldb, transposed: transposedB), c: c, ldc: ldc,
                   execution: execution)
    }
}

/// A row-major matrix held in bfloat16 for oneDNN products (converted once, kept).
public final class BF16Matrix: @unchecked Sendable {
    public let rows: Int
    public let columns: Int
    private let storage: UnsafeMutableRawPointer

    /// Converts a row-major f32 matrix (round to nearest even).
    public init(_ values: [Float], rows: Int, columns: Int) throws(OneDNNError) {
        precondition(values.count == rows * columns)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(2, 2 * rows * columns), alignment: 64)
        let result: Result<Void, OneDNNError> = values.withUnsafeBytes { v in
            do throws(OneDNNError) {
                try OneDNN.convert(rows: rows, columns: columns, ld: columns, toBF16: true, from: v.baseAddress!, to: buffer)
                return .success(())
            } catch { return .failure(error) }
        }
        if case .failure(let e) = result { buffer.deallocate(); throw e }
        self.rows = rows
        self.columns = columns
        storage = buffer
    }

    deinit { storage.deallocate() }

    /// Bytes the matrix occupies.
    public var byteCount: Int { 2 * rows * columns }

    /// Row `row` widened to f32 (exactly) and multiplied by `scale`, into `out` (`columns`
    /// floats): an embedding lookup.
    public func copyRow(_ row: Int, scale: Float = 1, into out: UnsafeMutablePointer<Float>) {
        precondition(row >= 0 && row < rows)
        let source = storage.assumingMemoryBound(to: UInt16.self) + row * columns
        for i in 0..<columns { out[i] = Float(bitPattern: UInt32(source[i]) << 16) * scale }
    }

    /// `C = A * op(B[:, columns])` with `A` (`m x k` f32, row stride `lda`) converted to
    /// bfloat16 first; `B` is this matrix, used as stored (`k x n`, `k = rows`, a block of
    /// its columns) or transposed (`n x k`: `n = rows`, `k = columns`, all of them). f32
    /// accumulation and result (`m x n`, row stride `ldc`).
    public func multiply(_ a: UnsafePointer<Float>, rows m: Int, lda: Int, transposed: Bool, columns block: Range<Int>? = nil,
                         into c: UnsafeMutablePointer<Float>, ldc: Int) throws(OneDNNError) {
        let k = transposed ? columns : rows
        let cols = block ?? 0..<columns
        let n = transposed ? rows : cols.count
        guard m > 0, n > 0 else { return }
        guard k > 0 else {
            for r in 0..<m { (c + r * ldc).update(repeating: 0, count: n) }
            return
        }
        let a16 = UnsafeMutableRawPointer.allocate(byteCount: 2 * m * k, alignment: 64)
        defer { a16.deallocate() }
        try OneDNN.convert(rows: m, columns: k, ld: lda, toBF16: true, from: a, to: a16)
        let b = transposed ? UnsafeRawPointer(storage) : UnsafeRawPointer(storage + 2 * cols.lowerBound)
        try OneDNN.matmul(m: m, n: n, k: k, a: a16, b: b, layout: .rowMajor(ldb: columns, transposed: transposed), c: c, ldc: ldc)
    }
}
