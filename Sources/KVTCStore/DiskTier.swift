import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tier in a directory: one file per entry, written atomically, verified on read.
///
/// - The tier owns one subdirectory of the directory it is given,
///   ``entriesDirectoryName``, marked by a format file (``formatFileName``) and locked
///   exclusively (`flock` on ``lockFileName``) while the tier is open: a second process
///   opening the same directory gets ``TierError/inUse(_:)``. Nothing outside the
///   subdirectory is ever read or deleted, and inside it only files named like the tier's
///   own entries and temporary files.
/// - Writes go to a temporary file in the subdirectory (`.<key>.<random>.tmp`), which is
///   renamed over `<key>.kve` only when complete, so a crash never leaves a partial entry
///   under its final name. When `synchronous` (`--disk-durable`), each file is `fsync`ed
///   before the rename and the directory after it.
/// - Every file carries its key, value length and a SHA-256 checksum; a read that fails
///   any check deletes the file, counts it in ``TierStats/corruptDropped`` and misses.
/// - On start the index is rebuilt from the subdirectory (headers and sizes checked, LRU
///   order from modification times), leftover temporary files are removed and the quota
///   is enforced by evicting the least recently used entries.
public actor DiskTier: CacheTier {
    public nonisolated let name: String
    /// The directory the tier was given.
    public nonisolated let directory: URL
    /// The subdirectory the tier owns and holds its entries in.
    public nonisolated let entriesDirectory: URL
    /// The byte quota (file sizes, headers included).
    public nonisolated let quota: Int
    /// Whether files are flushed to stable storage before they are renamed into place.
    public nonisolated let synchronous: Bool
    private var sizes: [StoreKey: Int] = [:]
    private var order = LRUOrder<StoreKey>()
    private var bytes = 0
    private var counters: TierStats
    private let lockDescriptor: Int32
    private let directoryDescriptor: Int32

    static let fileExtension = "kve"
    /// The subdirectory a tier owns.
    public static let entriesDirectoryName = "kvtc-disk-tier"
    /// The format marker inside it.
    public static let formatFileName = "FORMAT"
    /// The lock file inside it.
    public static let lockFileName = "LOCK"
    static let formatMarker = "kvtc disk tier 1\n"

    /// The subdirectory of `directory` a tier owns.
    public static func entriesDirectory(in directory: URL) -> URL {
        directory.appendingPathComponent(entriesDirectoryName, isDirectory: true)
    }

    /// Whether `name` is one of the tier's temporary files: `.<64 hex>.<digits>.tmp`.
    static func isTemporaryFile(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0].isEmpty && StoreKey(hex: String(parts[1])) != nil
            && !parts[2].isEmpty && parts[2].allSatisfy(\.isNumber) && parts[3] == "tmp"
    }

    /// Opens (creating if needed) a tier in `directory` with a byte `quota`.
    ///
    /// - Throws: ``TierError/inUse(_:)`` when another process has the tier open,
    ///   ``TierError/notATier(_:)`` when the subdirectory exists with foreign contents.
    public init(directory: URL, quota: Int, name: String = "disk", synchronous: Bool = false) throws(TierError) {
        self.name = name
        self.directory = directory
        let entries = Self.entriesDirectory(in: directory)
        self.entriesDirectory = entries
        self.quota = max(0, quota)
        self.synchronous = synchronous
        self.counters = TierStats(name: name, capacity: max(0, quota))
        let fm = FileManager.default
        do { try fm.createDirectory(at: entries, withIntermediateDirectories: true) } catch {
            throw .io("cannot create \(entries.path): \(error.localizedDescription)")
        }
        // Lock first: everything below touches files another process may be writing.
        let lockPath = entries.appendingPathComponent(Self.lockFileName).path
        let lock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw .io("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            close(lock)
            throw .inUse(entries.path)
        }
        let dirFD = open(entries.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFD >= 0 else {
            close(lock)
            throw .io("cannot open \(entries.path): \(String(cString: strerror(errno)))")
        }
        self.lockDescriptor = lock
        self.directoryDescriptor = dirFD
        let names: [String]
        do { names = try fm.contentsOfDirectory(atPath: entries.path) } catch {
            throw .io("cannot list \(entries.path): \(error.localizedDescription)")
        }
        // The format marker: written into a new tier, required in an existing one.
        let markerPath = entries.appendingPathComponent(Self.formatFileName).path
        if let marker = fm.contents(atPath: markerPath) {
            guard String(decoding: marker, as: UTF8.self) == Self.formatMarker else {
                throw .notATier("\(markerPath) names another format")
            }
        } else {
            let foreign = names.filter { $0 != Self.lockFileName && !Self.isTemporaryFile($0) && !$0.hasSuffix("." + Self.fileExtension) }
            guard foreign.isEmpty else {
                throw .notATier("\(entries.path) holds files that are not a kvtc tier's (\(foreign.prefix(3).joined(separator: ", ")))")
            }
            do { try Self.writeFile(markerPath, Array(Self.formatMarker.utf8), synchronous: synchronous, replace: true) }
        }
        var found: [(key: StoreKey, size: Int, mtime: Date)] = []
        for file in names {
            let path = entries.appendingPathComponent(file).path
            if Self.isTemporaryFile(file) {
                if (try? fm.removeItem(atPath: path)) != nil { counters.orphansRemoved += 1 }
                continue
            }
            // Only files named like entries are the tier's; anything else is left alone.
            guard file.hasSuffix("." + Self.fileExtension),
                  let key = StoreKey(hex: String(file.dropLast(Self.fileExtension.count + 1))) else { continue }
            guard let attributes = try? fm.attributesOfItem(atPath: path),
                  let size = (attributes[.size] as? NSNumber)?.intValue else { continue }
            let mtime = attributes[.modificationDate] as? Date ?? .distantPast
            let header = Self.readHeader(path)
            do { try SealedEntry.checkHeader(header, key: key, fileSize: size) } catch {
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
            try? fm.removeItem(atPath: entries.appendingPathComponent(Self.fileName(victim)).path)
            counters.evictions += 1
        }
    }

    deinit {
        close(directoryDescriptor)
        // Closing the descriptor releases the lock.
        close(lockDescriptor)
    }

    static func fileName(_ key: StoreKey) -> String { "\(key.hex).\(fileExtension)" }

    private func path(_ key: StoreKey) -> String { entriesDirectory.appendingPathComponent(Self.fileName(key)).path }

    static func readHeader(_ path: String) -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? h.close() }
        return [UInt8]((try? h.read(upToCount: SealedEntry.headerSize)) ?? Data())
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
        do { value = try SealedEntry.decode([UInt8](data), key: key) } catch {
            forget(key)
            unlink(p)
            counters.corruptDropped += 1
            counters.misses += 1
            return nil
        }
        order.touch(key)
        counters.hits += 1
        counters.bytesRead += value.count
        // Keep the recency across restarts.
        _ = utimes(p, nil)
        return value
    }

    public func put(_ key: StoreKey, _ value: [UInt8]) async throws(TierError) {
        let file = SealedEntry.encode(key: key, value: value)
        guard file.count <= quota else { throw .entryTooLarge(bytes: file.count, capacity: quota) }
        forgetForReplace(key)
        while bytes + file.count > quota, let victim = order.leastRecent {
            forget(victim)
            unlink(path(victim))
            counters.evictions += 1
        }
        let temp = entriesDirectory.appendingPathComponent(".\(key.hex).\(UInt64.random(in: 0...UInt64.max)).tmp").path
        do { try Self.writeFile(temp, file, synchronous: synchronous) } catch {
            counters.errors += 1
            throw error
        }
        guard rename(temp, path(key)) == 0 else {
            let message = String(cString: strerror(errno))
            unlink(temp)
            throw .io("cannot rename into \(path(key)): \(message)")
        }
        // Durable: the rename itself reaches stable storage with the directory.
        if synchronous, fsync(directoryDescriptor) != 0 {
            throw .io("cannot sync \(entriesDirectory.path): \(String(cString: strerror(errno)))")
        }
        sizes[key] = file.count
        order.touch(key)
        bytes += file.count
        counters.writes += 1
        counters.bytesWritten += value.count
    }

    private func forgetForReplace(_ key: StoreKey) {
        if sizes[key] != nil { forget(key) }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8], synchronous: Bool, replace: Bool = false) throws(TierError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (replace ? O_TRUNC : O_EXCL), 0o644)
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
