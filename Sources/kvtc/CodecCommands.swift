import ArgumentParser
import Crypto
import Foundation
import KVTCCalibration
import KVTCCache
import KVTCCodec
import KVTCLlamaState
import KVTCModels
import KVTCNumerics

/// Loads a profile, naming the file in errors.
func loadProfile(_ path: String) throws -> Profile {
    do { return try Profile(bytes: try readFile(path)) } catch let e as ProfileError { throw CommandError(path, e) }
}

/// Loads a KV cache interchange file, naming the file in errors.
func loadCache(_ path: String) throws -> KVCache {
    let bytes = try readFile(path)
    do {
        let file = try SafetensorsFile(bytes: bytes)
        return try KVCacheFile.decode(file)
    } catch let e as SafetensorsError {
        throw CommandError(path, e)
    } catch let e as KVCacheFileError {
        throw CommandError(path, e)
    }
}

func sha256Hex(_ bytes: [UInt8]) -> String {
    hexString(Array(SHA256.hash(data: bytes)))
}

struct CalibrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "calibrate",
        abstract: "Fit a profile (PCA bases and bit plans) from KV cache files or from text.",
        discussion: """
        From cache files: kvtc calibrate --output P CACHE.safetensors...
        From text, running the model (no intermediate files): \
        kvtc calibrate --corpus DIR|bundled [--model GGUF] [--tokens N] --output P
        """)

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(help: "Calibrate from the text files in DIR (or its calibration/ part); 'bundled' for the shipped corpus.")
    var corpus: String?

    @Option(help: "Calibration tokens to run through the model (with --corpus).")
    var tokens: Int = 32768

    @Option(name: .shortAndLong, help: "Where to write the profile.")
    var output: String

    @Option(help: "Nominal ratios to allocate bits for, comma-separated.")
    var ratios: String = "8,16,32,64"

    @Option(help: "Keep at most this many principal components per stream.")
    var rankCap: Int?

    @Option(name: .customLong("recipe"), help: ArgumentHelp("How features are scaled before the global PCA: \(recipeNames) (default: measured with --corpus, equalized from cache files; paper: the paper's method; weighted and measured need --corpus: they run the model).", valueName: "recipe"))
    var recipeOption: CalibrationRecipe?

    /// The recipe in effect.
    var recipe: CalibrationRecipe { recipeOption ?? (corpus != nil ? .standard : .standardWithoutModel) }

    @Option(help: "The keys' share of each ratio's bits (default 0.4; 0.5 with --recipe paper, as in the paper).")
    var keyShare: Double?

    @Option(help: "Group sizes the bit allocator may use, ascending from 1 (default: the paper's \(BitPlan.standardGroupSizes.map(String.init).joined(separator: ","))).")
    var groupSizes: String?

    @Argument(help: "KV cache interchange files (.safetensors).")
    var caches: [String] = []

    func calibrateFromCorpus(options: CalibrationOptions) throws -> Profile {
        let progress = Progress.shared
        let model = try modelOptions.load()
        let c: Corpus
        if corpus == "bundled" {
            c = try Corpus.bundled()
        } else {
            let url = URL(fileURLWithPath: corpus!)
            let sub = url.appendingPathComponent("calibration")
            if FileManager.default.fileExists(atPath: sub.path) {
                c = try Corpus(directory: url)
            } else {
                // A plain directory of text files: all of it is calibration text.
                let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
                let docs = names.sorted().compactMap { n in
                    (try? String(contentsOf: url.appendingPathComponent(n), encoding: .utf8)).map { Corpus.Document(name: n, text: $0) }
                }
                guard !docs.isEmpty else { throw CommandError(url.path, "holds no readable text files") }
                c = Corpus(calibration: docs, heldOut: [])
            }
        }
        var o = CorpusCalibrationOptions()
        o.tokens = tokens
        o.calibration = options
        return try CorpusCalibration.calibrate(model: model, corpus: c, options: o, progress: { progress.status($0) })
    }

    func validate() throws {
        if caches.isEmpty && corpus == nil { throw ValidationError("give cache files or --corpus") }
        if !caches.isEmpty && corpus != nil { throw ValidationError("give either cache files or --corpus, not both") }
        if tokens < 256 { throw ValidationError("--tokens must be at least 256") }
        if let r = rankCap, r < 1 { throw ValidationError("--rank-cap must be positive") }
        if let s = keyShare, !(s > 0.05 && s < 0.95) { throw ValidationError("--key-share must be in 0.05...0.95") }
        if let groupSizes { _ = try parseGroupSizes(groupSizes) }
        if recipe.usesFeatureWeights && corpus == nil {
            throw ValidationError("--recipe \(recipe.rawValue) weighs features by the model's sensitivity: calibrate with --corpus")
        }
    }

    func run() async throws {
        let progress = Progress.shared
        if corpus != nil {
            var options = CalibrationOptions()
            options.ratios = try parseRatios(ratios)
            options.rankCap = rankCap
            options.recipe = recipe
            options.keyShare = keyShare ?? recipe.standardKeyShare
            if let groupSizes { options.groupSizes = try parseGroupSizes(groupSizes) }
            let started = Stopwatch()
            let profile = try calibrateFromCorpus(options: options)
            try writeFile(output, profile.encoded())
            progress.done()
            printProfileSummary(profile, output: output, seconds: started.elapsed)
            return
        }
        var loaded: [KVCache] = []
        var sources: [Provenance.Source] = []
        for path in caches {
            progress.status("reading \(path)")
            let bytes = try readFile(path)
            let cache = try loadCache(path)
            if let first = loaded.first, first.geometry != cache.geometry || first.rope != cache.rope {
                throw CommandError(path, "geometry or RoPE differ from \(caches[0])")
            }
            loaded.append(cache)
            sources.append(.init(name: (path as NSString).lastPathComponent, sha256: sha256Hex(bytes), tokens: cache.tokenCount))
        }
        var options = CalibrationOptions()
        options.ratios = try parseRatios(ratios)
        options.rankCap = rankCap
        options.recipe = recipe
        options.keyShare = keyShare ?? recipe.standardKeyShare
        if let groupSizes { options.groupSizes = try parseGroupSizes(groupSizes) }
        let started = Stopwatch()
        let profile: Profile
        do {
            profile = try Calibrator.calibrate(
                caches: loaded, options: options,
                provenance: Provenance(rows: 0, sources: sources, model: loaded.first?.model ?? "", rankCap: rankCap),
                progress: { progress.status($0) })
        } catch {
            throw CommandError("calibration failed: \(error)")
        }
        try writeFile(output, profile.encoded())
        progress.done()
        printProfileSummary(profile, output: output, seconds: started.elapsed)
    }
}

func printProfileSummary(_ profile: Profile, output: String, seconds: Double) {
    print("profile \(output): \(profile.provenance.rows) rows, \(profile.geometry), recipe \(profile.provenance.recipe?.rawValue ?? "unrecorded"), \(String(format: "%.1f", seconds)) s")
    print("hash \(profile.contentHash)")
    for plan in profile.plans {
        print(String(format: "%5.0fx  keys %4d comps (%5d bits/token)  values %4d comps (%5d bits/token)",
                     plan.ratio, plan.keys.componentsKept, plan.keys.bitsPerToken,
                     plan.values.componentsKept, plan.values.bitsPerToken))
    }
}

struct CompressCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compress",
        abstract: "Compress a KV cache file or a llama.cpp sequence state into a kvtc blob.",
        discussion: """
        A llama.cpp state (llama_state_seq_save_file, or llama_state_seq_get_data bytes) is \
        recognised by its magic; its geometry and RoPE come from --model, and the output keeps \
        the state's cells, token ids, types and layout so `kvtc decompress` gives llama.cpp a \
        state it loads.
        """)

    @OptionGroup var modelOptions: ModelCommandOptions

    @Option(help: "Profile made by `kvtc calibrate`.")
    var profile: String

    @Option(help: "Nominal ratio; must be one of the profile's.")
    var ratio: Double = 16

    @Option(help: "Exact tokens at the start, by absolute position (attention sinks).")
    var sinkTokens: Int?

    @Option(help: "Exact most recent tokens.")
    var recentTokens: Int?

    @Option(help: "Lossless coder of the blob's chunks: deflate-1 (default) ... deflate-12, or zstd-1 ... zstd-19.")
    var coder: LosslessCoder = KVTCCompressor.defaultCoder

    @Option(help: "How the codes are stored: rans (default; one rANS model per group plane) or packed (bit-packed, then --coder).")
    var codeCoding: CodeCoding = KVTCCompressor.defaultCodeCoding

    @Argument(help: "KV cache interchange file (.safetensors) or llama.cpp sequence state.")
    var input: String

    @Option(name: .shortAndLong, help: "Where to write the blob.")
    var output: String

    func validate() throws {
        if let s = sinkTokens, s < 0 { throw ValidationError("--sink-tokens must be >= 0") }
        if let r = recentTokens, r < 0 { throw ValidationError("--recent-tokens must be >= 0") }
    }

    func run() async throws {
        let p = try loadProfile(profile)
        let bytes = try readFile(input)
        var state: LlamaSequenceState?
        var cache: KVCache
        if LlamaSequenceState.isState(bytes) {
            let model = try modelOptions.load()
            guard model.architecture == "llama" else {
                throw CommandError(input, "llama.cpp states of \(model.architecture) models are not supported yet (llama only)")
            }
            do {
                let s = try LlamaSequenceState(bytes: bytes)
                cache = try s.cache(geometry: model.geometry, rope: model.rope, model: model.identity)
                state = s
            } catch { throw CommandError(input, error) }
        } else {
            cache = try loadCache(input)
        }
        var compressor: KVTCCompressor
        do { compressor = try KVTCCompressor(profile: p, ratio: ratio, coder: coder) } catch { throw CommandError(profile, error) }
        compressor.codeCoding = codeCoding
        compressor.protection = Protection(sinkTokens: sinkTokens ?? p.protection.sinkTokens,
                                           recentTokens: recentTokens ?? p.protection.recentTokens)
        // A state's exact tokens are kept in its own bytes beside the blob (bit for bit in any
        // K/V type), so the blob holds zeros for them.
        var exactCells: [Int] = [], exactBytes: [UInt8] = []
        if let state {
            let (lead, trail) = compressor.protection.exactTokens(of: cache)
            exactCells = Array(0..<lead) + Array((cache.tokenCount - trail)..<cache.tokenCount)
            do { exactBytes = try state.bytes(ofCells: exactCells) } catch { throw CommandError(input, error) }
            let p = cache.geometry.featuresPerToken
            cache.withMutableStreams { k, v in
                for c in exactCells {
                    for i in (c * p)..<((c + 1) * p) { k[i] = 0; v[i] = 0 }
                }
            }
        }
        let input = cache
        let (blob, seconds) = try Stopwatch.time { () throws -> CompressedCache in
            do { return try compressor.compress(input) } catch { throw CommandError(self.input, error) }
        }
        if let state {
            let file = LlamaStateContainer(state: state, blob: blob.bytes, exactCells: exactCells, exactBytes: exactBytes).encoded()
            try writeFile(output, file)
            printReport(blob.report, seconds: seconds, wholeFile: false)
            // What the compressed tokens took in the state's own K/V types (Q8_0 holds about
            // half of fp16's bytes), against what they take in the blob.
            let cellBytes = state.streams.first?.layers.reduce(0) { $0 + $1.bytesPerCell } ?? 0
            let types = Set(state.streams.flatMap(\.layers).flatMap { [$0.keyType, $0.valueType] }).map(\.description).sorted()
            if cellBytes > 0, types != ["F16"] {
                let stateBytes = blob.report.compressedTokens * cellBytes
                print(String(format: "against the state %.2fx over compressed tokens (%@ as %@ -> %@)",
                             Double(stateBytes) / Double(max(1, blob.report.compressedTokensBytes)), formatBytes(stateBytes),
                             types.joined(separator: "/"), formatBytes(blob.report.compressedTokensBytes)))
            }
            print(String(format: "llama.cpp state   %.2fx (%@ state file -> %@ file)", Double(bytes.count) / Double(file.count),
                         formatBytes(bytes.count), formatBytes(file.count)))
            return
        }
        try writeFile(output, blob.bytes)
        printReport(blob.report, seconds: seconds)
    }
}

func printReport(_ r: CompressionReport, seconds: Double?, wholeFile: Bool = true) {
    print("tokens            \(r.tokens) (\(r.compressedTokens) compressed, \(r.tokens - r.compressedTokens) exact)")
    if let n = r.nominalRatio { print(String(format: "nominal ratio     %.1fx", n)) }
    if let m = r.outOfWindowTokens {
        print("out of window     \(m) compressed tokens keep only the full-context layers (no sliding window sees them again)")
    }
    print(String(format: "before entropy    %.2fx over compressed tokens", r.ratioBeforeEntropy))
    print(String(format: "after entropy     %.2fx over compressed tokens (%@ -> %@, all bytes counted)", r.ratio,
                 formatBytes(r.compressedTokensFP16Bytes), formatBytes(r.compressedTokensBytes)))
    if wholeFile {
        print(String(format: "whole file        %.2fx (%@ fp16 -> %@ file)", r.wholeCacheRatio,
                     formatBytes(r.cacheFP16Bytes), formatBytes(r.totalBytes)))
    }
    if let s = seconds {
        print(String(format: "time              %.3f s (%.0f MB/s of fp16 input)", s, Double(r.cacheFP16Bytes) / s / 1e6))
    }
}

struct DecompressCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decompress",
        abstract: "Restore a KV cache file, or a llama.cpp sequence state, from a kvtc blob.")

    @Option(help: "The profile the blob was made with.")
    var profile: String

    @Argument(help: "The blob.")
    var input: String

    @Option(name: .shortAndLong, help: "Where to write the cache (.safetensors) or state.")
    var output: String

    @Option(help: "Output format: safetensors or llama-state (default: the input's: llama-state for a blob made from one).")
    var format: String?

    @Option(help: "Tensor dtype of the output: F16, BF16 or F32.")
    var dtype: String = "F16"

    @Option(help: "Reconstruction on oneDNN: int8 (VNNI's integer dot products) or bf16; default: int8 where the CPU has AVX-512 VNNI.")
    var reconstruction: ReconstructionArithmetic = .preferred

    func run() async throws {
        guard let dt = TensorDType(rawValue: dtype.uppercased()), dt != .i64 else {
            throw ValidationError("--dtype must be F16, BF16 or F32")
        }
        let p = try loadProfile(profile)
        let file = try readFile(input)
        var state: LlamaSequenceState?
        var exact: (cells: [Int], bytes: [UInt8]) = ([], [])
        var bytes = file
        if LlamaStateContainer.isContainer(file) {
            do {
                let container = try LlamaStateContainer(bytes: file)
                state = container.state
                exact = (container.exactCells, container.exactBytes)
                bytes = container.blob
            } catch { throw CommandError(input, error) }
        }
        let format = self.format ?? (state == nil ? "safetensors" : "llama-state")
        guard format == "safetensors" || format == "llama-state" else { throw ValidationError("--format must be safetensors or llama-state") }
        if format == "llama-state" && state == nil {
            throw CommandError(input, "was not made from a llama.cpp state, so it cannot be written as one")
        }
        let compressor: KVTCCompressor
        do {
            // Any of the profile's ratios opens any blob of the profile; prefer the blob's own.
            let ratio = (try? Blob.summary(of: bytes).nominalRatio).flatMap { r in p.plans.first { $0.ratio == r }?.ratio }
            compressor = try KVTCCompressor(profile: p, ratio: ratio ?? p.plans[0].ratio, reconstruction: reconstruction)
        } catch {
            throw CommandError(profile, error)
        }
        var (cache, seconds) = try Stopwatch.time { () throws -> KVCache in
            do { return try compressor.decompress(bytes) } catch { throw CommandError(input, error) }
        }
        if let state {
            // The exact cells come from the container, in the state's own bytes.
            let restored: LlamaSequenceState
            do {
                restored = try state.replacingRows(with: cache).replacingCells(exact.cells, with: exact.bytes)
                if format == "safetensors" { cache = try restored.cache(geometry: cache.geometry, rope: cache.rope, model: cache.model) }
            } catch { throw CommandError(input, error) }
            if format == "llama-state" {
                try writeFile(output, restored.encoded())
                print(String(format: "%d tokens restored in %.3f s -> %@ (llama.cpp state)", cache.tokenCount, seconds, output))
                return
            }
        }
        do { try KVCacheFile.write(cache, to: output, dtype: dt) } catch { throw CommandError(output, error) }
        print(String(format: "%d tokens restored in %.3f s -> %@", cache.tokenCount, seconds, output))
    }
}

extension CalibrationRecipe: ExpressibleByArgument {}
extension GEMMBackend: ExpressibleByArgument {}
extension ReconstructionArithmetic: ExpressibleByArgument {}
extension ModelPrecision: ExpressibleByArgument {}

extension CodeCoding: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

extension LosslessCoder: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// The recipes' names as option help lists them.
let recipeNames = CalibrationRecipe.allCases.map(\.rawValue).joined(separator: "|")
