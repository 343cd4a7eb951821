import Data
import Foundation

/// Resolves a spec's data source to files under the data roots and loads it.
public enum DataSources {
    /// Default roots: Debian's dataset folder, then `./datasets`.
    public static let defaultRoots = ["/usr/share/datasets", "datasets"]

    /// Where a data source lives: its path with symlinks resolved, and the data root it lies in
    /// (also resolved; nil for an absolute path the caller allowed outside every root).
    public struct Location: Sendable, Equatable {
        public var path: String
        public var root: String?
        /// `file` as a user should see it: relative to the data root when it lies inside it.
        public func display(_ file: String) -> String {
            guard let root else { return file }
            if file == root { return "." }
            return file.hasPrefix(root + "/") ? String(file.dropFirst(root.count + 1)) : file
        }
    }

    /// The path of `relative` inside the first root that has it, symlinks resolved (see `locate`).
    public static func resolve(_ relative: String, roots: [String], allowAbsolute: Bool) throws(DataError) -> String {
        try locate(relative, roots: roots, allowAbsolute: allowAbsolute).path
    }

    /// Finds `relative` inside the first root that has it. Paths are confined to the roots: no
    /// NUL or control characters, no `..`, no absolute path unless `allowAbsolute`, no symlink
    /// leading outside. The path returned has its symlinks resolved: that is the path to open
    /// (the readers check again, on the opened descriptor, that it is still inside the root).
    /// Error messages name the path as the user gave it, never the server's roots.
    public static func locate(_ relative: String, roots: [String], allowAbsolute: Bool) throws(DataError) -> Location {
        guard !relative.isEmpty else { throw DataError(file: relative, "the dataset path is empty") }
        guard relative.unicodeScalars.allSatisfy({ $0.value >= 0x20 && !(0x7f...0x9f).contains($0.value) }) else {
            throw DataError(file: relative.debugDescription, "dataset paths must not contain NUL or other control characters")
        }
        let fm = FileManager.default
        if relative.hasPrefix("/") {
            if allowAbsolute { return Location(path: relative, root: nil) }
            // An absolute path is accepted only where it (symlinks resolved) lies inside a root.
            let real = URL(fileURLWithPath: relative).resolvingSymlinksInPath().path
            for root in roots {
                let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
                if real.hasPrefix(realRoot + "/") && fm.fileExists(atPath: real) { return Location(path: real, root: realRoot) }
            }
            throw DataError(file: relative, "absolute paths must lie inside a data root (GET /v1/info lists them)")
        }
        guard !relative.split(separator: "/").contains("..") else { throw DataError(file: relative, "'..' is not allowed in dataset paths") }
        for root in roots {
            let candidate = (root as NSString).appendingPathComponent(relative)
            guard fm.fileExists(atPath: candidate) else { continue }
            let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
            let real = URL(fileURLWithPath: candidate).resolvingSymlinksInPath().path
            guard real == realRoot || real.hasPrefix(realRoot + "/") else {
                throw DataError(file: relative, "resolves outside its data root")
            }
            return Location(path: real, root: realRoot)
        }
        throw DataError(file: relative, "not found under the data roots (GET /v1/info lists them)")
    }

    /// Loads a data source (`limit` applied). `size` is the side length image folders are stored at.
    /// Files are opened through `Readers.openFile(_:within:)`, which checks on the open descriptor
    /// that the file is still inside the root (a symlink swapped since `locate` is not followed
    /// out). Errors name files relative to the data root.
    ///
    /// Image folders and tar shards are streamed (`ImageStream`): indexed without decoding (the
    /// index cached at `indexCache`, a file in the job's directory, while the data is unchanged),
    /// every image converted to `channels`, decoded when a view needs it.
    public static func load(_ source: JobSpec.DataSource, roots: [String], size: Int, allowAbsolute: Bool = true,
                            channels: Int = 3, indexCache: URL? = nil) throws(DataError) -> ImageDataset {
        let location = try locate(source, roots: roots, allowAbsolute: allowAbsolute)
        do {
            return try load(source, at: location, size: size, channels: channels, indexCache: indexCache)
        } catch {
            throw DataError(file: location.display(error.file), error.message)
        }
    }

    /// `locate` for a data source: a tar brace pattern's folder is located (braces may appear in
    /// the shard file name only).
    public static func locate(_ source: JobSpec.DataSource, roots: [String], allowAbsolute: Bool) throws(DataError) -> Location {
        guard source.format == .tar, source.path.contains("{") else { return try locate(source.path, roots: roots, allowAbsolute: allowAbsolute) }
        let folder = (source.path as NSString).deletingLastPathComponent
        guard !folder.contains("{") else { throw DataError(file: source.path, "braces may only appear in the shard file name") }
        var location = try locate(folder.isEmpty ? "." : folder, roots: roots, allowAbsolute: allowAbsolute)
        location.path += "/" + (source.path as NSString).lastPathComponent
        return location
    }

    static func load(_ source: JobSpec.DataSource, at location: Location, size: Int, channels: Int = 3,
                     indexCache: URL? = nil) throws(DataError) -> ImageDataset {
        if source.isStreamed {
            let path = location.path
            let build = { () throws(DataError) -> ImageIndex in
                if source.format == .tar { return try ImageIndex.shards(try ImageIndex.shardPaths(path), within: location.root) }
                let dir = folder(path, split: source.split)
                close(try Readers.openFile(dir, within: location.root, directory: true))   // a directory inside the data root
                return try ImageIndex.folder(dir)
            }
            let index: ImageIndex
            if let indexCache { index = try ImageIndex.cached(at: indexCache, build: build).0 } else { index = try build() }
            return ImageDataset(stream: ImageStream(index: index, root: location.root, channels: channels, size: size,
                                                    cacheBytes: source.cacheBytes, limit: source.limit))
        }
        let path = location.path, root = location.root
        let ds: ImageDataset
        switch source.format {
        case .idx:
            let prefix = source.split == "test" ? "t10k" : "train"
            func pick(_ name: String) throws(DataError) -> String {
                for candidate in [name + ".gz", name] where FileManager.default.fileExists(atPath: path + "/" + candidate) {
                    return path + "/" + candidate
                }
                throw DataError(file: path + "/" + name, "missing (looked for \(name) and \(name).gz)")
            }
            ds = try Readers.idx(images: try pick("\(prefix)-images-idx3-ubyte"), labels: try? pick("\(prefix)-labels-idx1-ubyte"), within: root)
        case .cifar10:
            let names = source.split == "test" ? ["test_batch.bin"] : (1...5).map { "data_batch_\($0).bin" }
            ds = try Readers.cifar(files: names.map { path + "/" + $0 }, hundred: false, within: root)
        case .cifar100:
            ds = try Readers.cifar(files: [path + "/" + (source.split == "test" ? "test.bin" : "train.bin")], hundred: true, within: root)
        case .folder, .tar:
            preconditionFailure("streamed formats are loaded above")
        case .npy:
            ds = try Readers.npy(path, within: root)
        }
        return ds.prefix(source.limit)
    }
}

extension DataSources {
    /// The formats `inspect` reads: the spec's, and `tar` (WebDataset-style shards: a folder of
    /// `.tar` files, or a brace pattern in the file name such as `shards/train-{000..099}.tar`).
    public static let inspectableFormats = JobSpec.DataFormat.allCases.map(\.rawValue)

    /// What a dataset holds (see `DatasetReport`), files named relative to their data root.
    /// Image folders and tar shards are indexed and each image's header read (`decode`: each
    /// image decoded whole, which also finds truncated files); the in-memory formats are loaded.
    public static func inspect(format: String, path: String, split: String?, roots: [String], decode: Bool,
                               allowAbsolute: Bool = true) throws(DataError) -> DatasetReport {
        guard inspectableFormats.contains(format) else {
            throw DataError(file: path, "unknown data format \(format): one of \(inspectableFormats.joined(separator: ", "))")
        }
        if format == "tar" {
            // A pattern's braces are in the file name: the folder is located, the name expanded in it.
            let location = try locate(JobSpec.DataSource(format: .tar, path: path, split: "train"), roots: roots, allowAbsolute: allowAbsolute)
            do {
                let shards = try ImageIndex.shardPaths(location.path)
                var report = DatasetReport.inspect(try ImageIndex.shards(shards, within: location.root), path: path, decode: decode, within: location.root)
                report.first_errors = report.first_errors.map { location.display($0) }
                return report
            } catch {
                throw DataError(file: location.display(error.file), error.message)
            }
        }
        let dataFormat = JobSpec.DataFormat(rawValue: format)!
        let location = try locate(path, roots: roots, allowAbsolute: allowAbsolute)
        if dataFormat == .folder {
            let dir = split.map { folder(location.path, split: $0) } ?? location.path
            do {
                return DatasetReport.inspect(try ImageIndex.folder(dir), path: path, decode: decode, within: location.root)
            } catch {
                throw DataError(file: location.display(error.file), error.message)
            }
        }
        let source = JobSpec.DataSource(format: dataFormat, path: path, split: split ?? "train")
        do {
            return DatasetReport.inMemory(try load(source, at: location, size: 32), format: format, path: path)
        } catch {
            throw DataError(file: location.display(error.file), error.message)
        }
    }
}

extension DataSources {
    /// The datasets lying directly under the data roots, each with its format told from its
    /// contents and the facts `inspect` reports: the in-memory formats loaded, folders and tar
    /// shards indexed with the headers of up to `sample` images read (spread evenly), so a
    /// listing stays quick however large they are. One that cannot be read is listed with why.
    public static func discover(roots: [String], sample: Int = 200) -> [DatasetReport] {
        let fm = FileManager.default
        var out: [DatasetReport] = []
        var seen: Set<String> = []
        for root in roots {
            let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
            guard seen.insert(realRoot).inserted else { continue }
            for name in ((try? fm.contentsOfDirectory(atPath: realRoot)) ?? []).sorted() where !name.hasPrefix(".") {
                let full = realRoot + "/" + name
                guard let format = formatOf(full) else { continue }
                let location = Location(path: full, root: realRoot)
                do {
                    switch format {
                    case .tar:
                        let index = try ImageIndex.shards(try ImageIndex.shardPaths(full), within: realRoot)
                        out.append(DatasetReport.inspect(index, path: name, decode: false, within: realRoot, sample: sample))
                    case .folder:
                        let index = try ImageIndex.folder(full)
                        out.append(DatasetReport.inspect(index, path: name, decode: false, within: realRoot, sample: sample))
                    default:
                        let source = JobSpec.DataSource(format: format, path: name, split: "train")
                        out.append(DatasetReport.inMemory(try load(source, at: location, size: 32), format: format.rawValue, path: name))
                    }
                } catch {
                    out.append(DatasetReport.unreadable(format: format.rawValue, path: name,
                                                        message: "\(DataError(file: location.display(error.file), error.message))"))
                }
            }
        }
        return out
    }

    /// An image folder's split: its subfolder of that name when there is one, else the folder.
    static func folder(_ path: String, split: String) -> String {
        var isDir: ObjCBool = false
        let sub = path + "/" + split
        return FileManager.default.fileExists(atPath: sub, isDirectory: &isDir) && isDir.boolValue ? sub : path
    }

    /// A dataset's format told from what it holds (nil: not a dataset).
    static func formatOf(_ path: String) -> JobSpec.DataFormat? {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return nil }
        if !isDir.boolValue { return path.lowercased().hasSuffix(".npy") ? .npy : nil }
        let names = Set(((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { !$0.hasPrefix(".") })
        if names.contains(where: { $0.hasPrefix("train-images-idx3-ubyte") || $0.hasPrefix("t10k-images-idx3-ubyte") }) { return .idx }
        if names.contains("data_batch_1.bin") { return .cifar10 }
        if names.contains("train.bin") && names.contains("test.bin") { return .cifar100 }
        if names.contains(where: { $0.lowercased().hasSuffix(".tar") }) { return .tar }
        let images: (String) -> Bool = { ["jpg", "jpeg", "png"].contains(($0 as NSString).pathExtension.lowercased()) }
        if names.contains(where: images) { return .folder }
        let subfolderImages = names.contains { sub in
            ((try? fm.contentsOfDirectory(atPath: path + "/" + sub)) ?? []).contains(where: images)
        }
        return subfolderImages ? .folder : nil
    }
}
