import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tier in one directory: one file per entry, written atomically, verified on read.
///
/// - Writes go to a temporary file in the same directory (`.<key>.<random>.tmp`), which is
///   renamed over `<key>.kve` only when complete, so a crash never leaves a partial entry
///   under its final name. Optionally each file is `fsync`ed before the rename.
/// - Every file carries its key, value length and a SHA-256 checksum; a read that fails
///   any check deletes the file, counts it in ``TierStats/corruptDropped`` and misses.
/// - On start the index is rebuilt from the directory (headers and sizes checked, LRU
///   order from modification times), leftover temporary files are removed and the quota
///   is enforced by evicting the least recently used entries.
///
/// The directory must be owned by one process at a time.
public actor DiskTier: CacheTier {
    public nonisolated let name: String
    /// The directory holding the entries.
    public nonisolated let directory: URL
    /// The byte quota (file sizes, headers included).
    public nonisolated let quota: Int
    /// Whether files are flushed to stable storage before they are renamed into place.
    public nonisolated let synchronous: Bool
    private var sizes: [StoreKey: Int] = [:]
    private var order = LRUOrder<StoreKey>()
    private var bytes = 0
    private var counters: TierStats

    static let fileExtension = "kve"

    /// Opens (creating if needed) a tier in `directory` with a byte `quota`.
    public init(directory: URL, quota: Int, name: String = "disk", synchronous: Bool = false) throws(TierError) {
        self.name = name
        self.directory = directory
        self.quota = max(0, quota)
        self.synchronous = synchronous
        self.counters = TierStats(name: name, capacity: max(0, quota))
        let fm = FileManager.default
        do { try fm.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
            throw .io("cannot create \(directory.path): \(error.localizedDescription)")
        }
        let names: [String]
        do { names = try fm.contentsOfDirectory(atPath: directory.path) } catch {
            throw .io("cannot list \(directory.path): \(error.localizedDescription)")
        }
        var found: [(key: StoreKey, size: Int, mtime: Date)] = []
        for file in names {
            let path = directory.appendingPathComponent(file).path
            if file.hasSuffix(".tmp") {
                if (try? fm.removeItem(atPath: path)) != nil { counters.orphansRemoved += 1 }
                continue
            }
            guard file.hasSuffix("." + Self.fileExtension) else { continue }
            guard let key = StoreKey(hex: String(file.dropLast(Self.fileExtension.count + 1))) else {
                if (try? fm.removeItem(atPath: path)) != nil { counters.orphansRemoved += 1 }
                continue
            }
            guard let attributes = try? fm.attributesOfItem(atPath: path),
                  let size = (attributes[.size] as? NSNumber)?.intValue else { continue }
            let mtime = attributes[.modificationDate] as? Date ?? .distantPast
            let header = Self.readHeader(path)
            do { try DiskEntryFile.checkHeader(header, key: key, fileSize: size) } catch {
                try? fm.removeItem(atPath: path)
                counters.corruptDropped += 1
                continue
            }
            found.append((key, size, mtime))
        }
        found.sort { ($0.mtime, $0.key) < ($1.mtime, $1.key) }
        for f in found {
            sizes[f.key] = f.size
            order.touch(f.key)
            bytes += f.size
        }
        while bytes > self.quota, let victim = order.leastRecent {
            order.remove(victim)
            bytes -= sizes.removeValue(forKey: victim) ?? 0
            try? fm.removeItem(atPath: directory.appendingPathComponent(Self.fileName(victim)).path)
            counters.evictions += 1
        }
    }

    static func fileName(_ key: StoreKey) -> String { "\(key.hex).\(fileExtension)" }

    private func path(_ key: StoreKey) -> String { directory.appendingPathComponent(Self.fileName(key)).path }

    static func readHeader(_ path: String) -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? h.close() }
        return [UInt8]((try? h.read(upToCount: DiskEntryFile.headerSize)) ?? Data())
    }

    private func forget(_ key: StoreKey) {
        order.remove(key)
        bytes -= sizes.removeValue(forKey: key) ?? 0
    }

    public func get(_ key: StoreKey) async throws(TierError) -> [UInt8]? {
        guard sizes[key] != nil else { counters.misses += 1; return nil }
        let p = path(key)
        guard let data = FileManager.default.contents(atPath: p) else {
            forget(key)
            counters.vanished += 1
            counters.misses += 1
            return nil
        }
        let value: [UInt8]
        do { value = try DiskEntryFile.decode([UInt8](data), key: key) } catch {
            forget(key)
            unlink(p)
            counters.corruptDropped += 1
            counters.misses += 1
            return nil
        }
        order.touch(key)
        counters.hits += 1
        // Keep the recency across restarts.
        _ = utimes(p, nil)
        return value
    }

    public func put(_ key: StoreKey, _ value: [UInt8]) async throws(TierError) {
        let file = DiskEntryFile.encode(key: key, value: value)
        guard file.count <= quota else { throw .entryTooLarge(bytes: file.count, capacity: quota) }
        forgetForReplace(key)
        while bytes + file.count > quota, let victim = order.leastRecent {
            forget(victim)
            unlink(path(victim))
            counters.evictions += 1
        }
        let temp = directory.appendingPathComponent(".\(key.hex).\(UInt64.random(in: 0...UInt64.max)).tmp").path
        try Self.writeFile(temp, file, synchronous: synchronous)
        guard rename(temp, path(key)) == 0 else {
            let message = String(cString: strerror(errno))
            unlink(temp)
            throw .io("cannot rename into \(path(key)): \(message)")
        }
        sizes[key] = file.count
        order.touch(key)
        bytes += file.count
        counters.writes += 1
    }

    private func forgetForReplace(_ key: StoreKey) {
        if sizes[key] != nil { forget(key) }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8], synchronous: Bool) throws(TierError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else { throw .io("cannot create \(path): \(String(cString: strerror(errno)))") }
        var written = 0
        var failure: String?
        bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let n = write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = String(cString: strerror(errno))
                    return
                }
                written += n
            }
        }
        if failure == nil, synchronous, fsync(fd) != 0 { failure = String(cString: strerror(errno)) }
        close(fd)
        if let failure {
            unlink(path)
            throw .io("cannot write \(path): \(failure)")
        }
    }

    public func remove(_ key: StoreKey) async throws(TierError) {
        guard sizes[key] != nil else { return }
        forget(key)
        unlink(path(key))
    }

    public func contains(_ key: StoreKey) async throws(TierError) -> Bool { sizes[key] != nil }

    public func contains(_ keys: [StoreKey]) async throws(TierError) -> [Bool] { keys.map { sizes[$0] != nil } }

    public func demote(_ key: StoreKey) async { order.demote(key) }

    public var byteCount: Int { bytes }

    public func stats() async -> TierStats {
        var s = counters
        s.entries = sizes.count
        s.bytes = bytes
        return s
    }
}
