import ArgumentParser

@main
struct Kvtc: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtc",
        abstract: "Compress transformer KV caches ~20x with KV cache transform coding.",
        subcommands: [
            DemoCommand.self, CalibrateCommand.self, CompressCommand.self, DecompressCommand.self, InspectCommand.self,
            EvalCommand.self, ServeCommand.self, ChatCommand.self, ModelsCommand.self, GenerateCommand.self, PerplexityCommand.self, CaptureCommand.self, TokenizeCommand.self,
            BenchCommand.self, StoreCommand.self,
        ]
    )

    static func main() async {
        CPURequirement.check()
        ProcessTuning.applyBeforeLoading()
        await main(nil)
    }
}

/// `kvtc bench codec|model|...`
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure speed on this machine.",
        subcommands: [BenchCodecCommand.self, BenchModelCommand.self, BenchServeCommand.self, BenchFaultsCommand.self,
                      BenchSharedTierCommand.self, BenchLlamaServerCommand.self]
    )
}
