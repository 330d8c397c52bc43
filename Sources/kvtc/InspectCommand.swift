import ArgumentParser
import Foundation
import KVTCCache
import KVTCCodec

struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Describe a profile, blob or KV cache file.")

    @Argument(help: "A profile, a blob or a .safetensors cache.")
    var file: String

    @Flag(help: "Print JSON.")
    var json = false

    struct ProfileSummary: Codable {
        var kind = "profile"
        var formatVersion: Int
        var contentHash: String
        var geometry: KVGeometry
        var rope: RoPE
        var protection: Protection
        var keysRank: Int
        var valuesRank: Int
        var featureScaling: Bool
        /// The full-context layers that tokens every window has passed keep (version 3).
        var outOfWindowLayers: [Int]?
        var plans: [PlanSummary]
        var provenance: Provenance
        var bytes: Int
    }

    struct PlanSummary: Codable {
        var ratio: Double
        var keys: String
        var values: String
        var keyBitsPerToken: Int
        var valueBitsPerToken: Int
        var calibrationErrorKeys: Double
        var calibrationErrorValues: Double
        var outOfWindowKeyBitsPerToken: Int?
        var outOfWindowValueBitsPerToken: Int?
    }

    func run() async throws {
        let bytes = try readFile(file)
        if Profile.isProfile(bytes) {
            let p = try loadProfile(file)
            let version = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            let s = ProfileSummary(formatVersion: version, contentHash: p.contentHash, geometry: p.geometry, rope: p.rope, protection: p.protection,
                                   keysRank: p.keys.basis.rank, valuesRank: p.values.basis.rank,
                                   featureScaling: p.keys.featureScale != nil, outOfWindowLayers: p.outOfWindow?.layers,
                                   plans: p.plans.map { PlanSummary(ratio: $0.ratio, keys: $0.keys.description, values: $0.values.description,
                                                                    keyBitsPerToken: $0.keys.bitsPerToken, valueBitsPerToken: $0.values.bitsPerToken,
                                                                    calibrationErrorKeys: $0.calibrationErrorKeys,
                                                                    calibrationErrorValues: $0.calibrationErrorValues,
                                                                    outOfWindowKeyBitsPerToken: $0.outOfWindow?.keys.bitsPerToken,
                                                                    outOfWindowValueBitsPerToken: $0.outOfWindow?.values.bitsPerToken) },
                                   provenance: p.provenance, bytes: bytes.count)
            if json { print(jsonString(s)); return }
            print("profile   \(file) (\(formatBytes(bytes.count)), format v\(version))")
            print("hash      \(p.contentHash)")
            print("geometry  \(p.geometry), RoPE \(p.rope.layout.rawValue) theta \(p.rope.theta) dims \(p.rope.rotaryDims)")
            print("exact     \(p.protection.sinkTokens) sink tokens, \(p.protection.recentTokens) recent tokens")
            print("bases     keys rank \(p.keys.basis.rank), values rank \(p.values.basis.rank); recipe \(p.provenance.recipe?.rawValue ?? (s.featureScaling ? "equalized (unrecorded)" : "paper (unrecorded)"))")
            print("rows      \(p.provenance.rows) from \(p.provenance.sources.count) sources; model \(p.provenance.model)")
            if let w = p.outOfWindow {
                print("windows   tokens every window has passed keep layers \(w.layers.map(String.init).joined(separator: ", ")): keys rank \(w.keys.basis.rank), values rank \(w.values.basis.rank)")
            }
            for plan in s.plans {
                print(String(format: "%5.0fx keys   %5d bits/token: %@", plan.ratio, plan.keyBitsPerToken, plan.keys))
                print(String(format: "       values %5d bits/token: %@", plan.valueBitsPerToken, plan.values))
                if let k = plan.outOfWindowKeyBitsPerToken, let v = plan.outOfWindowValueBitsPerToken {
                    print(String(format: "       beyond the windows: keys %d, values %d bits/token", k, v))
                }
            }
        } else if Blob.isBlob(bytes) {
            let s: BlobSummary
            do { s = try Blob.summary(of: bytes) } catch { throw CommandError(file, error) }
            if json { print(jsonString(s)); return }
            print("blob      \(file) (\(formatBytes(bytes.count)), format v\(s.formatVersion); chunks \(s.coders.joined(separator: ", ")))")
            print("profile   \(s.profileHash)")
            print("cache     \(s.tokens) tokens, \(s.geometry); model \(s.model.isEmpty ? "-" : s.model)")
            print("exact     \(s.leadingExactTokens) leading + \(s.trailingExactTokens) trailing tokens (\(s.exactTokenPrecisionBits)-bit)")
            print(String(format: "ratio     %.0fx nominal; keys %d, values %d bits/token", s.nominalRatio, s.keyBitsPerToken, s.valueBitsPerToken))
            if s.outOfWindowTokens > 0, let layers = s.layerAttention {
                let full = layers.indices.filter { layers[$0].window == nil }
                print("windows   \(s.outOfWindowTokens) compressed tokens keep only layers \(full.map(String.init).joined(separator: ", ")) (every window has passed them)")
            }
            let p = s.geometry.featuresPerToken
            let n = s.tokens - s.leadingExactTokens - s.trailingExactTokens
            let codeKinds = ["keyCodes", "keyMeta", "valueCodes", "valueMeta", "outOfWindowKeyCodes", "outOfWindowKeyMeta",
                             "outOfWindowValueCodes", "outOfWindowValueMeta"]
            let exactKinds = ["protectedKeys", "protectedValues"]
            let raw = codeKinds.reduce(0) { $0 + (s.rawBytesBySection[$1] ?? 0) }
            let stored = codeKinds.reduce(0) { $0 + (s.storedBytesBySection[$1] ?? 0) }
            let exactStored = exactKinds.reduce(0) { $0 + (s.storedBytesBySection[$1] ?? 0) }
            let overhead = bytes.count - stored - exactStored
            let fp16 = 4 * n * p
            print(String(format: "ratios    %.2fx before entropy coding, %.2fx after, over compressed tokens; %.2fx whole file",
                         Double(fp16) / Double(raw + overhead), Double(fp16) / Double(stored + overhead),
                         Double(4 * s.tokens * p) / Double(bytes.count)))
            for k in s.rawBytesBySection.keys.sorted() {
                print("  \(k.padding(toLength: 22, withPad: " ", startingAt: 0)) \(formatBytes(s.rawBytesBySection[k]!)) -> \(formatBytes(s.storedBytesBySection[k]!))")
            }
        } else {
            let cache: KVCache
            do { cache = try loadCache(file) } catch {
                throw CommandError("\(file): not a kvtc profile or blob, and not a KV cache file: \(error)")
            }
            struct CacheSummary: Codable { var kind = "cache"; var tokens: Int; var geometry: KVGeometry; var rope: RoPE; var model: String; var firstPosition: Int?; var fp16Bytes: Int }
            let s = CacheSummary(tokens: cache.tokenCount, geometry: cache.geometry, rope: cache.rope, model: cache.model,
                                 firstPosition: cache.positions.first, fp16Bytes: cache.fp16Bytes)
            if json { print(jsonString(s)); return }
            print("cache     \(file): \(cache.tokenCount) tokens, \(cache.geometry), RoPE \(cache.rope.layout.rawValue) theta \(cache.rope.theta)")
            print("model     \(cache.model.isEmpty ? "-" : cache.model); fp16 size \(formatBytes(cache.fp16Bytes))")
        }
    }
}
