import ArgumentParser
import Foundation
import KVTCBenchmarks

/// `kvtc bench shared-tier`: two servers on one Redis deployment, a master shut down mid-run.
struct BenchSharedTierCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shared-tier",
        abstract: "Two kvtc servers sharing a Redis deployment under concurrent clients; one master is shut down mid-run.",
        discussion: """
        Each client's conversations alternate between the two servers turn by turn (each repetition \
        under a fresh cache_salt), so every turn after a conversation's first can only restore what \
        the other server stored, through Redis. Floor: 0 failed requests with a master shut down. \
        First one master stalls (CLIENT PAUSE: it accepts commands and answers none) for a few \
        seconds, then another is shut down with SHUTDOWN NOSAVE and not restarted (restart it by \
        hand; the servers use it again without being restarted). Each phase's restore times show \
        what a slow or dead node costs a request (the servers' Redis deadline is 50 ms).
        """)

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(name: .long, help: "The Redis deployment: redis://host:port[,host:port...].")
    var redis: String

    @Option(name: .long, help: "Certificate authorities (PEM) trusted for rediss:// (default: the system's).")
    var redisCA: String?

    @Option(name: .long, help: "Seconds of traffic.")
    var duration = 120.0

    @Option(name: .long, help: "Concurrent clients.")
    var clients = 4

    @Option(name: .long, help: "Seconds into the run at which one master stalls (negative: never).")
    var stallAfter = 20.0

    @Option(name: .long, help: "Seconds the stalled master answers nothing.")
    var stallSeconds = 5.0

    @Option(name: .long, help: "Seconds into the run at which another master is shut down (negative: never).")
    var killAfter = 40.0

    @Option(name: .long, help: "Memory budget of each server.")
    var memoryBudget = ByteCount(bytes: 16 << 20)

    @Option(name: .long, help: "Working directory (server logs); default: a new temporary one.")
    var workDirectory: String?

    @Option(name: .long, help: "Write the JSON report here.")
    var json: String?

    func validate() throws {
        guard duration > 0, clients > 0 else { throw ValidationError("--duration and --clients must be positive") }
    }

    func run() async throws {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let work = workDirectory.map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("kvtc-shared-tier-\(UUID().uuidString)")
        var configuration = SharedTierConfiguration(executable: executable, redisURL: redis, workDirectory: work)
        configuration.model = modelOptions.model
        configuration.redisCA = redisCA
        configuration.duration = duration
        configuration.clients = clients
        configuration.killAfter = killAfter < 0 ? nil : killAfter
        configuration.stallAfter = stallAfter < 0 ? nil : stallAfter
        configuration.stallSeconds = stallSeconds
        configuration.memoryBudget = memoryBudget.bytes
        let report = try await SharedTierRun(configuration) { warn("kvtc: \($0)") }.run()
        print("shared tier: \(report.topology); work directory \(work.path)")
        print(String(format: "%.0f s, %d clients over 2 servers: %d requests, %d failed %@", report.seconds, clients,
                     report.requests, report.failed, report.failed == 0 ? "(floor: 0) ok" : "(floor: 0) MISSED \(report.failures)"))
        if let node = report.stalledNode, let at = report.stalledAtSeconds {
            print(String(format: "master %@ stalled at %.0f s for %.0f s", node, at, stallSeconds))
        }
        if let node = report.killedNode, let at = report.killedAtSeconds {
            print(String(format: "master %@ shut down at %.0f s", node, at))
        }
        print(String(format: "turns served by the other server than their previous turn: %d, of which %d restored its tokens (%.1f%%)",
                     report.crossServerTurns, report.crossServerRestores,
                     100 * Double(report.crossServerRestores) / Double(max(1, report.crossServerTurns))))
        print("phase     requests  tokens restored  restore p50   p95       max       latency p50  p95")
        for p in report.phases {
            print(p.phase.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)
                  + String(format: " %8d  %14.1f%%  %7.3f s  %7.3f s  %7.3f s  %7.3f s  %7.3f s", p.requests, 100 * p.cachedFraction,
                           p.restoreP50Seconds, p.restoreP95Seconds, p.restoreMaxSeconds, p.latencyP50Seconds, p.latencyP95Seconds))
        }
        if let json {
            try writeFile(json, Array(jsonString(report).utf8))
            warn("kvtc: wrote \(json)")
        }
    }
}
