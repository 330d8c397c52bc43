import ArgumentParser

@main
struct Kvtc: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtc",
        abstract: "Compress transformer KV caches ~20x with KV cache transform coding.",
        subcommands: [
            CalibrateCommand.self, CompressCommand.self, DecompressCommand.self, InspectCommand.self,
            BenchCommand.self,
        ]
    )
}

/// `kvtc bench codec|model|...`
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure speed on this machine.",
        subcommands: [BenchCodecCommand.self]
    )
}
