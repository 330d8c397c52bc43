import ArgumentParser
import Foundation
import KVTCBenchmarks

/// `kvtc bench faults`: the fault harness against a real `kvtc serve` on loopback.
struct BenchFaultsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "faults",
        abstract: "Run kvtc serve on loopback under valid chats, hostile requests, SIGKILLs and disk damage; report what broke.",
        discussion: """
        Valid multi-turn chats of two tenants are checked against the same turns recomputed from \
        scratch (the server stores exact f32 chunks so that a correct restore answers identically); \
        hostile requests (mutated JSON, oversized bodies, control-token floods, forged and unsigned \
        raw entries, cross-tenant probes and reads, disconnects mid-stream, half-sent requests, \
        garbage) run alongside; the server is killed with SIGKILL at random moments and restarted on \
        the same disk directory, whose entry files are damaged meanwhile. Floors: >= 10,000 requests, \
        >= 2,000 hostile, >= 5 kills, 0 wrong answers, 0 cross-tenant hits, 0 crashes, 0 5xx on valid \
        requests, /health p99 <= 100 ms, peak RSS <= model + memory budget + 512 MiB.
        """)

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "Seconds of traffic.")
    var duration = 720.0

    @Option(name: .long, help: "Concurrent client threads (besides the /health prober).")
    var clients = 3

    @Option(name: .long, help: "SIGKILLs of the server spread over the run.")
    var kills = 6

    @Option(name: .long, help: "Seed of every random choice.")
    var seed: UInt64 = 2026

    @Option(name: .long, help: "Memory budget of the server's memory tier.")
    var memoryBudget = ByteCount(bytes: 256 << 20)

    @Option(name: .long, help: "Working directory (keys, secret, disk tier, server log); default: a new temporary one.")
    var workDirectory: String?

    @Option(name: .long, help: "Store codec of the server: exact (every reply must equal recomputing) or kvtc (differences reported).")
    var cacheCodec = "exact"

    @Option(name: .long, help: "Write the JSON report here.")
    var json: String?

    func validate() throws {
        guard duration > 0, clients > 0, kills >= 0 else { throw ValidationError("--duration and --clients must be positive") }
        guard ["exact", "kvtc"].contains(cacheCodec) else { throw ValidationError("--cache-codec must be exact or kvtc") }
    }

    func run() async throws {
        let model = try modelOptions.load()
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let work = workDirectory.map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-faults-\(UUID().uuidString)")
        var configuration = FaultHarnessConfiguration(executable: executable, workDirectory: work)
        configuration.model = modelOptions.model
        configuration.duration = duration
        configuration.clients = clients
        configuration.kills = kills
        configuration.seed = seed
        configuration.memoryBudget = memoryBudget.bytes
        configuration.cacheCodec = cacheCodec
        let harness = FaultHarness(configuration) { warn("kvtc: \($0)") }
        let report = try harness.run(model: model)
        print(String(format: "fault harness: %.0f s, %d requests (%d hostile), %d kills, %d entry files damaged; work directory %@",
                     report.seconds, report.requests, report.hostileRequests, report.kills, report.filesDamaged, work.path))
        print("class                          requests  outcomes")
        for c in report.classes {
            let outcomes = c.outcomes.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
            print((c.hostile ? "! " : "  ") + c.name.padding(toLength: 28, withPad: " ", startingAt: 0)
                  + String(format: " %8d  ", c.total) + outcomes)
        }
        func row(_ name: String, _ value: String, _ floor: String, _ ok: Bool) {
            print(name.padding(toLength: 34, withPad: " ", startingAt: 0) + value.padding(toLength: 16, withPad: " ", startingAt: 0)
                  + floor.padding(toLength: 18, withPad: " ", startingAt: 0) + (ok ? "ok" : "MISSED"))
        }
        print("measure                           value           floor")
        row("requests", "\(report.requests)", ">= 10000", report.requests >= 10_000)
        row("hostile requests", "\(report.hostileRequests)", ">= 2000", report.hostileRequests >= 2_000)
        row("injected kills", "\(report.kills)", ">= 5", report.kills >= 5)
        if report.cacheCodec == "exact" {
            row("wrong answers", "\(report.wrongAnswers) of \(report.comparedTurns)", "0", report.wrongAnswers == 0)
        } else {
            row("differ from recompute (lossy)", "\(report.lossyDivergences) of \(report.comparedTurns)", "(reported)", true)
        }
        row("cross-tenant hits", "\(report.crossTenantHits)", "0", report.crossTenantHits == 0)
        row("crashes not injected", "\(report.crashes)", "0", report.crashes == 0)
        row("5xx on valid requests", "\(report.serverErrorsOnValid)", "0", report.serverErrorsOnValid == 0)
        row("5xx on hostile requests", "\(report.serverErrorsOnHostile)", "(reported)", true)
        row("valid latency p50 / p99", String(format: "%.3f / %.3f s", report.validLatencyP50, report.validLatencyP99), "(reported)", true)
        row("/health latency p50 / p99", String(format: "%.1f / %.1f ms", 1000 * report.healthLatencyP50, 1000 * report.healthLatencyP99),
            "p99 <= 100 ms", report.healthLatencyP99 <= 0.1)
        print(String(format: "model weights as loaded (f32): %.0f MiB; memory budget %.0f MiB", Double(report.modelBytes) / 1048576,
                     Double(memoryBudget.bytes) / 1048576))
        row("peak RSS", String(format: "%.0f MiB", Double(report.peakRSSBytes) / 1048576),
            String(format: "<= %.0f MiB", Double(report.rssLimitBytes) / 1048576), report.peakRSSBytes <= report.rssLimitBytes)
        let invalid = report.invalidEntriesByReason.sorted { $0.key < $1.key }.map { "\($0.key) \(Int($0.value))" }.joined(separator: ", ")
        print("invalid entries dropped (last incarnation): \(invalid.isEmpty ? "none" : invalid)")
        for i in report.incidents { print("incident: \(i)") }
        if let json {
            try writeFile(json, Array(jsonString(report).utf8))
            warn("kvtc: wrote \(json)")
        }
    }
}
