import Foundation
import KVTCNumerics
import KVTCRuntime
import KVTCStore

/// Request-level counters and latency histograms of the server, rendered as Prometheus
/// text together with the store's and tiers' statistics.
public final class ServerMetrics: Sendable {
    struct State {
        var requests: [String: Int] = [:]
        var errors: [String: Int] = [:]
        var promptTokens = 0
        var cachedTokens = 0
        var prefilledTokens = 0
        var completionTokens = 0
        var refused: [String: Int] = [:]
        var cancelled = 0
        var restore = LatencyHistogram()
        var prefill = LatencyHistogram()
        var ttft = LatencyHistogram()
        var store = LatencyHistogram()
    }

    private let state = Locked(State())

    public init() {}

    /// Counts a request to `route`.
    public func request(_ route: String) { state.withLock { $0.requests[route, default: 0] += 1 } }

    /// Counts an error response with `status`.
    public func error(status: Int) { state.withLock { $0.errors[String(status), default: 0] += 1 } }

    /// Counts a request the bounded queue did not admit.
    public func refused(_ reason: Admission.Refusal) {
        state.withLock { $0.refused["\(reason)", default: 0] += 1 }
    }

    /// Counts a generation stopped early (client gone or deadline passed).
    public func cancelled() { state.withLock { $0.cancelled += 1 } }

    /// Records a generation.
    public func record(_ o: GenerationOutcome) {
        state.withLock {
            $0.promptTokens += o.promptTokens
            $0.cachedTokens += o.cachedTokens
            $0.prefilledTokens += o.prefilledTokens
            $0.completionTokens += o.tokens.count
            $0.restore.observe(o.restoreSeconds)
            $0.prefill.observe(o.prefillSeconds)
            $0.ttft.observe(o.timeToFirstTokenSeconds)
            $0.store.observe(o.storeSeconds)
        }
    }

    /// The Prometheus text exposition.
    public func render(store: StoreCounters?, tiers: [TierStats],
                       admission: (running: Int, waiting: Int, refused: Int) = (0, 0, 0), engine: EngineCounters = EngineCounters()) -> String {
        let s = state.withLock { $0 }
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Double)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, v) in samples { out += "\(name)\(labels) \(format(v))\n" }
        }
        func histogram(_ name: String, _ help: String, _ series: [(String, LatencyHistogram)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (label, h) in series {
                let prefix = label.isEmpty ? "" : label + ","
                let braces = label.isEmpty ? "" : "{\(label)}"
                for (b, c) in zip(h.bounds, h.counts) { out += "\(name)_bucket{\(prefix)le=\"\(format(b))\"} \(c)\n" }
                out += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(h.count)\n\(name)_sum\(braces) \(format(h.sum))\n\(name)_count\(braces) \(h.count)\n"
            }
        }
        metric("kvtc_http_requests_total", "counter", "HTTP requests by route.",
               s.requests.sorted { $0.key < $1.key }.map { ("{route=\"\($0.key)\"}", Double($0.value)) })
        metric("kvtc_http_errors_total", "counter", "Error responses by status.",
               s.errors.sorted { $0.key < $1.key }.map { ("{status=\"\($0.key)\"}", Double($0.value)) })
        metric("kvtc_prompt_tokens_total", "counter", "Prompt tokens received.", [("", Double(s.promptTokens))])
        metric("kvtc_cached_tokens_total", "counter", "Prompt tokens restored from the store.", [("", Double(s.cachedTokens))])
        metric("kvtc_prefilled_tokens_total", "counter", "Prompt tokens run through the model.", [("", Double(s.prefilledTokens))])
        metric("kvtc_completion_tokens_total", "counter", "Tokens generated.", [("", Double(s.completionTokens))])
        metric("kvtc_requests_running", "gauge", "Generation requests running.", [("", Double(admission.running))])
        metric("kvtc_requests_waiting", "gauge", "Generation requests waiting for a slot.", [("", Double(admission.waiting))])
        metric("kvtc_requests_refused_total", "counter", "Generation requests not admitted, by reason.",
               s.refused.sorted { $0.key < $1.key }.map { ("{reason=\"\($0.key)\"}", Double($0.value)) })
        metric("kvtc_requests_cancelled_total", "counter", "Generations stopped early (client gone or deadline).", [("", Double(s.cancelled))])
        metric("kvtc_restore_fallbacks_total", "counter", "Restored caches the model refused; answered by recomputing.", [("", Double(engine.restoreFallbacks))])
        metric("kvtc_upstream_restores_total", "counter", "Stored prefixes restored into an upstream engine's slot.", [("", Double(engine.upstreamRestores))])
        metric("kvtc_upstream_restores_unused_total", "counter", "Restores the upstream engine did not reuse (llama-server with a sliding-window model needs --swa-full).", [("", Double(engine.upstreamRestoresUnused))])
        metric("kvtc_upstream_saves_total", "counter", "Upstream slot saves compressed into the store.", [("", Double(engine.upstreamSaves))])
        metric("kvtc_upstream_saves_refused_total", "counter", "Upstream slot saves refused by kvtc's checks (damaged, foreign or mismatched).", [("", Double(engine.upstreamSavesRefused))])
        metric("kvtc_upstream_failures_total", "counter", "Requests whose upstream backend failed.", [("", Double(engine.upstreamFailures))])
        if let c = store {
            metric("kvtc_cache_lookups_total", "counter", "Prefix lookups.", [("", Double(c.lookups))])
            metric("kvtc_cache_hits_total", "counter", "Lookups that restored a prefix.", [("", Double(c.hits))])
            metric("kvtc_cache_misses_total", "counter", "Lookups that found no usable prefix.", [("", Double(c.misses))])
            var reasons = c.invalidEntriesByReason
            reasons["checksum"] = tiers.reduce(0) { $0 + $1.corruptDropped }
            metric("kvtc_cache_invalid_entries_total", "counter", "Entries rejected on read and removed, by reason.",
                   reasons.sorted { $0.key < $1.key }.map { ("{reason=\"\($0.key)\"}", Double($0.value)) })
            metric("kvtc_cache_chunks_written_total", "counter", "Chunks compressed and stored.", [("", Double(c.chunksWritten))])
            metric("kvtc_compression_ratio", "gauge", "fp16 bytes over stored bytes of the chunks written.", [("", c.chunkCompressionRatio)])
        }
        let byTier = { (f: (TierStats) -> Int) in tiers.map { ("{tier=\"\($0.name)\"}", Double(f($0))) } }
        metric("kvtc_tier_bytes", "gauge", "Bytes held by tier.", byTier { $0.bytes })
        metric("kvtc_tier_capacity_bytes", "gauge", "Byte budget or quota by tier.", byTier { $0.capacity ?? 0 })
        metric("kvtc_tier_entries", "gauge", "Entries held by tier.", byTier { $0.entries })
        metric("kvtc_tier_hits_total", "counter", "Reads that found an entry, by tier.", byTier { $0.hits })
        metric("kvtc_tier_misses_total", "counter", "Reads that found nothing, by tier.", byTier { $0.misses })
        metric("kvtc_tier_evictions_total", "counter", "Entries evicted for the budget, by tier.", byTier { $0.evictions })
        metric("kvtc_tier_corrupt_dropped_total", "counter", "Entries dropped on failed verification, by tier.", byTier { $0.corruptDropped })
        metric("kvtc_tier_writes_total", "counter", "Entries written, by tier (a Redis tier counts them when Redis acknowledged them).", byTier { $0.writes })
        metric("kvtc_tier_errors_total", "counter", "Tier operations that failed (I/O, network, timeouts); failed reads are misses.", byTier { $0.errors })
        metric("kvtc_tier_read_bytes_total", "counter", "Entry bytes read, by tier.", byTier { $0.bytesRead })
        metric("kvtc_tier_written_bytes_total", "counter", "Entry bytes written, by tier.", byTier { $0.bytesWritten })
        metric("kvtc_tier_writes_dropped_total", "counter", "Writes given up (queue full or failed), by tier.", byTier { $0.writesDropped })
        let remote = tiers.compactMap { t in t.roundTrips.map { ("tier=\"\(t.name)\"", $0) } }
        if !remote.isEmpty {
            histogram("kvtc_tier_round_trip_seconds", "Round-trip latency of a remote tier's batches.", remote)
        }
        histogram("kvtc_restore_seconds", "Lookup and restore latency.", [("", s.restore)])
        histogram("kvtc_prefill_seconds", "Prefill latency of the uncached prompt tokens.", [("", s.prefill)])
        histogram("kvtc_time_to_first_token_seconds", "Time to first token.", [("", s.ttft)])
        histogram("kvtc_store_seconds", "Latency of storing a cache after generation.", [("", s.store)])
        return out
    }

    private func format(_ v: Double) -> String {
        if v == v.rounded(), abs(v) < 1e15 { return String(Int(v)) }
        return String(v)
    }
}
