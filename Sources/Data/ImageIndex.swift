import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where every image of a large dataset lies, found without decoding any: an image folder's
/// files, or the members of WebDataset-style tar shards. Holds per sample only where its bytes
/// are (a file, or an offset and length inside a shard), its name and its label, so 1.28 M
/// ImageNet photos index in about 100 MB; the images themselves are read when they are needed.
///
/// The index remembers the size and modification time of everything it read (files, shards
/// and, for a folder, its directories, which change when entries come and go): `isCurrent`
/// tells whether it still describes the data, so a cached copy (kept in a job's directory,
/// never in the data root, which may be read-only) is used only while it does.
public struct ImageIndex: Codable, Sendable, Equatable {
    public enum Layout: String, Codable, Sendable { case folder, tar }

    /// A file or directory the index was built from, as it was then.
    public struct Source: Codable, Sendable, Equatable {
        /// Relative to `directory`.
        public var path: String
        public var size: Int64
        /// Modification time, nanoseconds since 1970.
        public var mtime: Int64
        public var isDirectory: Bool
    }

    /// Something wrong found while indexing (a shard cut short, a sample without an image): the
    /// place and what. Such samples are left out and counted.
    public struct Problem: Codable, Sendable, Equatable, CustomStringConvertible {
        public var name: String
        public var message: String
        public var description: String { "\(name): \(message)" }
        public init(name: String, message: String) { self.name = name; self.message = message }
    }

    public var layout: Layout
    /// The folder the sources' paths are relative to.
    public var directory: String
    public var sources: [Source]
    /// Per sample: the source holding its bytes, where they start and how many.
    public var sourceOf: [Int32]
    public var offsets: [Int64]
    public var lengths: [Int64]
    /// Per sample: its name as users should see it (a relative path, or `shard.tar:key.ext`).
    public var names: [String]
    /// Per sample, when every sample has one: the class folder's index, or the `.cls` value.
    public var labels: [Int]?
    /// Class folder names by label (folders with class subfolders).
    public var classNames: [String]?
    public var problems: [Problem]

    public var count: Int { names.count }

    static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

    // MARK: - Image folders

    /// An image folder: with subfolders, each is a class (labels by sorted name) holding images
    /// at any depth; without, the images directly inside. Hidden entries are skipped and
    /// symbolic links are not followed. Files are listed, never opened.
    public static func folder(_ directory: String) throws(DataError) -> ImageIndex {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else { throw DataError(file: directory, "not a directory") }
        var sources: [Source] = []
        var sourceOf: [Int32] = [], lengths: [Int64] = [], names: [String] = [], labels: [Int] = []
        guard let top = stat(directory, isDirectory: true) else { throw DataError(file: directory, "cannot stat") }
        sources.append(Source(path: ".", size: top.size, mtime: top.mtime, isDirectory: true))
        let entries = ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        let classes = entries.filter { isRealDirectory(directory + "/" + $0) }

        /// Adds the images under `relative` (recursively when `deep`), with `label`.
        func add(_ relative: String, label: Int?, deep: Bool) {
            let base = relative.isEmpty ? directory : directory + "/" + relative
            let children = ((try? fm.contentsOfDirectory(atPath: base)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
            for name in children {
                let rel = relative.isEmpty ? name : relative + "/" + name
                let full = directory + "/" + rel
                if isRealDirectory(full) {
                    guard deep, let s = stat(full, isDirectory: true) else { continue }
                    sources.append(Source(path: rel, size: s.size, mtime: s.mtime, isDirectory: true))
                    add(rel, label: label, deep: true)
                } else if imageExtensions.contains((name as NSString).pathExtension.lowercased()), let s = stat(full, isDirectory: false) {
                    sources.append(Source(path: rel, size: s.size, mtime: s.mtime, isDirectory: false))
                    sourceOf.append(Int32(sources.count - 1))
                    lengths.append(s.size)
                    names.append(rel)
                    if let label { labels.append(label) }
                }
            }
        }
        if classes.isEmpty {
            add("", label: nil, deep: false)
        } else {
            for (label, c) in classes.enumerated() {
                guard let s = stat(directory + "/" + c, isDirectory: true) else { continue }
                sources.append(Source(path: c, size: s.size, mtime: s.mtime, isDirectory: true))
                add(c, label: label, deep: true)
            }
        }
        guard !names.isEmpty else { throw DataError(file: directory, "no .jpg, .jpeg or .png images found") }
        return ImageIndex(layout: .folder, directory: directory, sources: sources, sourceOf: sourceOf,
                          offsets: [Int64](repeating: 0, count: names.count), lengths: lengths, names: names,
                          labels: classes.isEmpty ? nil : labels, classNames: classes.isEmpty ? nil : classes, problems: [])
    }

    // MARK: - Tar shards

    /// WebDataset-style shards: the members of each tar grouped by key (the member's path up to
    /// the first dot of its file name), one sample per key with a `.jpg`, `.jpeg` or `.png`
    /// (the first of those present) and an optional `.cls` holding its integer label. Only the
    /// 512-byte headers (and the small `.cls` members) are read. A shard cut short keeps the
    /// samples before the cut; the rest are problems.
    public static func shards(_ paths: [String], within root: String? = nil) throws(DataError) -> ImageIndex {
        guard !paths.isEmpty else { throw DataError(file: "", "no tar shards given") }
        let directory = commonDirectory(paths)
        var index = ImageIndex(layout: .tar, directory: directory, sources: [], sourceOf: [], offsets: [], lengths: [], names: [],
                               labels: [], classNames: nil, problems: [])
        var allLabeled = true
        for path in paths {
            let fd = try Readers.openFile(path, within: root)
            defer { close(fd) }
            var st = Glibc.stat()
            fstat(fd, &st)
            let rel = relativePath(path, to: directory)
            index.sources.append(Source(path: rel, size: Int64(st.st_size), mtime: mtimeNanos(st), isDirectory: false))
            let shard = Int32(index.sources.count - 1)
            let (members, problem) = TarReader.members(fd: fd, size: Int64(st.st_size))
            if let problem { index.problems.append(Problem(name: rel, message: problem)) }
            // Group by key, keeping the shard's order.
            var order: [String] = []
            var byKey: [String: [String: TarReader.Member]] = [:]
            for m in members {
                let (key, ext) = TarReader.split(m.name)
                guard !key.isEmpty else { continue }
                if byKey[key] == nil { order.append(key) }
                byKey[key, default: [:]][ext.lowercased()] = m
            }
            for key in order {
                let group = byKey[key]!
                guard let (ext, image) = ["jpg", "jpeg", "png"].lazy.compactMap({ e in group[e].map { (e, $0) } }).first else {
                    index.problems.append(Problem(name: "\(rel):\(key)", message: "no .jpg, .jpeg or .png member (has \(group.keys.sorted().joined(separator: ", ")))"))
                    continue
                }
                var label: Int?
                if let cls = group["cls"], cls.size <= 64 {
                    var bytes = [UInt8](repeating: 0, count: Int(cls.size))
                    let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(cls.offset)) }
                    if n == bytes.count { label = Int(String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) }
                    if label == nil { index.problems.append(Problem(name: "\(rel):\(key).cls", message: "not an integer label")) }
                }
                if let label { index.labels?.append(label) } else { allLabeled = false }
                index.sourceOf.append(shard)
                index.offsets.append(image.offset)
                index.lengths.append(image.size)
                index.names.append("\(rel):\(key).\(ext)")
            }
        }
        if !allLabeled { index.labels = nil }
        guard index.count > 0 else {
            throw DataError(file: directory, "no samples with a .jpg, .jpeg or .png member in \(paths.count) shard(s)"
                + (index.problems.first.map { " (\($0))" } ?? ""))
        }
        return index
    }

    /// The shards a spec names: a folder (its `.tar` files, sorted) or a brace pattern
    /// (`shard-{000000..000099}.tar`, every expansion must exist).
    public static func shardPaths(_ pattern: String) throws(DataError) -> [String] {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: pattern, isDirectory: &isDir), isDir.boolValue {
            let tars = ((try? FileManager.default.contentsOfDirectory(atPath: pattern)) ?? [])
                .filter { $0.lowercased().hasSuffix(".tar") && !$0.hasPrefix(".") }.sorted().map { pattern + "/" + $0 }
            guard !tars.isEmpty else { throw DataError(file: pattern, "no .tar shards in this folder") }
            return tars
        }
        let paths = try BracePattern.expand(pattern)
        for p in paths where !FileManager.default.fileExists(atPath: p) { throw DataError(file: p, "no such shard") }
        return paths
    }

    // MARK: - Reading and checking

    /// The bytes of sample `i` (opened through `Readers.openFile`, so confined to `root`).
    public func bytes(of i: Int, within root: String? = nil) throws(DataError) -> [UInt8] {
        let source = sources[Int(sourceOf[i])]
        let path = directory + "/" + source.path
        let fd = try Readers.openFile(path, within: root)
        defer { close(fd) }
        let length = Int(lengths[i])
        var out = [UInt8](repeating: 0, count: length)
        var done = 0
        while done < length {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, length - done, off_t(offsets[i]) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw DataError(file: names[i], "cannot read: \(String(cString: strerror(errno)))") }
            if n == 0 { throw DataError(file: names[i], "cut short: \(done) of \(length) bytes") }
            done += n
        }
        return out
    }

    /// Whether every file and directory the index was built from has its size and modification
    /// time still (nothing added, removed or rewritten).
    public func isCurrent() -> Bool {
        sources.allSatisfy { s in
            guard let now = Self.stat(directory + "/" + s.path, isDirectory: s.isDirectory) else { return false }
            return now.mtime == s.mtime && (s.isDirectory || now.size == s.size)
        }
    }

    /// The index cached at `cache` when it is still current, else a fresh one from `build`,
    /// cached there (a cache that cannot be written is no error: the next run indexes again).
    public static func cached(at cache: URL, build: () throws(DataError) -> ImageIndex) throws(DataError) -> (ImageIndex, fromCache: Bool) {
        if let data = try? Data(contentsOf: cache), let index = try? JSONDecoder().decode(ImageIndex.self, from: data), index.isCurrent() {
            return (index, true)
        }
        let index = try build()
        if let data = try? JSONEncoder().encode(index) {
            try? FileManager.default.createDirectory(at: cache.deletingLastPathComponent(), withIntermediateDirectories: true)
            try? data.write(to: cache, options: .atomic)
        }
        return (index, false)
    }

    // MARK: - Helpers

    static func isRealDirectory(_ path: String) -> Bool {
        var st = Glibc.stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
    }

    /// Size and modification time (ns) of a regular file or directory, without following a symlink.
    static func stat(_ path: String, isDirectory: Bool) -> (size: Int64, mtime: Int64)? {
        var st = Glibc.stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == (isDirectory ? S_IFDIR : S_IFREG) else { return nil }
        return (Int64(st.st_size), mtimeNanos(st))
    }

    static func mtimeNanos(_ st: Glibc.stat) -> Int64 { Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec) }

    static func commonDirectory(_ paths: [String]) -> String {
        var parts = (paths[0] as NSString).deletingLastPathComponent.split(separator: "/", omittingEmptySubsequences: false)
        for p in paths.dropFirst() {
            let other = (p as NSString).deletingLastPathComponent.split(separator: "/", omittingEmptySubsequences: false)
            var k = 0
            while k < min(parts.count, other.count) && parts[k] == other[k] { k += 1 }
            parts = Array(parts.prefix(k))
        }
        let joined = parts.joined(separator: "/")
        return joined.isEmpty ? (paths[0].hasPrefix("/") ? "/" : ".") : joined
    }

    static func relativePath(_ path: String, to directory: String) -> String {
        directory == "/" ? String(path.dropFirst()) : path.hasPrefix(directory + "/") ? String(path.dropFirst(directory.count + 1)) : path
    }
}

/// The headers of a tar file (POSIX ustar, GNU long names, pax `path` records), read without
/// its contents.
public enum TarReader {
    public struct Member: Sendable, Equatable {
        public var name: String
        /// Where the member's bytes start in the file, and how many.
        public var offset: Int64
        public var size: Int64
    }

    /// The regular-file members of the tar open at `fd` (of `size` bytes), and what stopped the
    /// reading early if something did (a bad header, a member running past the end).
    public static func members(fd: Int32, size: Int64) -> ([Member], String?) {
        var out: [Member] = []
        var offset: Int64 = 0
        var header = [UInt8](repeating: 0, count: 512)
        var longName: String?
        var paxPath: String?
        while offset + 512 <= size {
            let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 512, off_t(offset)) }
            guard n == 512 else { return (out, "cannot read the header at byte \(offset)") }
            if header.allSatisfy({ $0 == 0 }) { return (out, nil) }   // end of archive
            guard let memberSize = octal(header[124..<136]), checksumOK(header) else {
                return (out, "not a tar header at byte \(offset) (a damaged shard, or not a tar file)")
            }
            let type = header[156]
            let data = offset + 512
            guard data + memberSize <= size else {
                return (out, "cut short: a member needs \(memberSize) bytes at byte \(data) but the shard ends at \(size)")
            }
            switch type {
            case UInt8(ascii: "L"):   // GNU long name: the next member's name
                longName = readString(fd: fd, offset: data, count: Int(min(memberSize, 65536)))
            case UInt8(ascii: "x"):   // pax extended header: "len key=value\n" records
                let text = readString(fd: fd, offset: data, count: Int(min(memberSize, 1 << 20))) ?? ""
                for record in text.split(separator: "\n") {
                    if let eq = record.firstIndex(of: "="), let space = record.firstIndex(of: " "), space < eq,
                       record[record.index(after: space)..<eq] == "path" {
                        paxPath = String(record[record.index(after: eq)...])
                    }
                }
            case UInt8(ascii: "0"), 0:
                let name = paxPath ?? longName ?? headerName(header)
                out.append(Member(name: name, offset: data, size: memberSize))
                longName = nil; paxPath = nil
            default:
                longName = nil; paxPath = nil   // directories, links, global headers: skipped
            }
            offset = data + (memberSize + 511) / 512 * 512
        }
        return (out, offset < size ? "cut short inside a header at byte \(offset)" : nil)
    }

    /// WebDataset's key and extension: the path up to the first dot of the file name, and the rest.
    public static func split(_ path: String) -> (key: String, ext: String) {
        let slash = path.lastIndex(of: "/").map { path.index(after: $0) } ?? path.startIndex
        guard let dot = path[slash...].firstIndex(of: ".") else { return (path, "") }
        return (String(path[..<dot]), String(path[path.index(after: dot)...]))
    }

    static func headerName(_ h: [UInt8]) -> String {
        let name = String(decoding: h[0..<100].prefix { $0 != 0 }, as: UTF8.self)
        let magic = h[257..<262]
        guard Array(magic) == Array("ustar".utf8) else { return name }
        let prefix = String(decoding: h[345..<500].prefix { $0 != 0 }, as: UTF8.self)
        return prefix.isEmpty ? name : prefix + "/" + name
    }

    /// An octal field (NUL- or space-terminated), or GNU's base-256 form.
    static func octal(_ field: ArraySlice<UInt8>) -> Int64? {
        if let first = field.first, first & 0x80 != 0 {
            var v: Int64 = Int64(first & 0x7f)
            for b in field.dropFirst() { v = v << 8 | Int64(b) }
            return v
        }
        let text = String(decoding: field.prefix { $0 != 0 && $0 != 32 }, as: UTF8.self).trimmingCharacters(in: .whitespaces)
        return text.isEmpty ? 0 : Int64(text, radix: 8)
    }

    static func checksumOK(_ h: [UInt8]) -> Bool {
        guard let stored = octal(h[148..<156]) else { return false }
        var sum: Int64 = 0
        for (i, b) in h.enumerated() { sum += (148..<156).contains(i) ? 32 : Int64(b) }
        return sum == stored
    }

    static func readString(fd: Int32, offset: Int64, count: Int) -> String? {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard n == count else { return nil }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// Shell-style brace expansion of shard names, as WebDataset writes them: numeric ranges keep
/// their zero padding (`{000..099}`), lists take each item (`{a,b}`), several braces multiply.
public enum BracePattern {
    /// At most this many names from one pattern.
    public static let limit = 1_000_000

    public static func expand(_ pattern: String) throws(DataError) -> [String] {
        guard let open = pattern.firstIndex(of: "{") else {
            guard !pattern.contains("}") else { throw DataError(file: pattern, "a '}' without its '{'") }
            return [pattern]
        }
        guard let close = pattern[open...].firstIndex(of: "}") else { throw DataError(file: pattern, "a '{' without its '}'") }
        let head = String(pattern[..<open]), body = String(pattern[pattern.index(after: open)..<close])
        let tail = try expand(String(pattern[pattern.index(after: close)...]))
        var items: [String]
        if let range = body.range(of: "..") {
            let a = String(body[..<range.lowerBound]), b = String(body[range.upperBound...])
            guard let lo = Int(a), let hi = Int(b), lo <= hi, a.allSatisfy(\.isNumber), b.allSatisfy(\.isNumber) else {
                throw DataError(file: pattern, "{\(body)} is not a range like {000..099}")
            }
            guard hi - lo < limit else { throw DataError(file: pattern, "{\(body)} names more than \(limit) shards") }
            let width = a.hasPrefix("0") || a.count == b.count ? a.count : 0
            items = (lo...hi).map { v in let s = String(v); return String(repeating: "0", count: max(0, width - s.count)) + s }
        } else {
            items = body.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard items.count > 1 else { throw DataError(file: pattern, "{\(body)} is neither a range nor a list") }
        }
        guard items.count * tail.count <= limit else { throw DataError(file: pattern, "names more than \(limit) shards") }
        return items.flatMap { i in tail.map { head + i + $0 } }
    }
}
