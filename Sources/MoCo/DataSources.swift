import Data
import Foundation

/// Resolves a spec's data source to files under the data roots and loads it.
public enum DataSources {
    /// Default roots: Debian's dataset folder, then `./datasets`.
    public static let defaultRoots = ["/usr/share/datasets", "datasets"]

    /// The path of `relative` inside the first root that has it. Paths are confined to the roots:
    /// no `..`, no absolute path unless `allowAbsolute`, no symlink leading outside.
    public static func resolve(_ relative: String, roots: [String], allowAbsolute: Bool) throws(DataError) -> String {
        if relative.hasPrefix("/") {
            if allowAbsolute { return relative }
            // An absolute path is accepted only where it (symlinks resolved) lies inside a root.
            let real = URL(fileURLWithPath: relative).resolvingSymlinksInPath().path
            for root in roots {
                let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
                if real.hasPrefix(realRoot + "/") && FileManager.default.fileExists(atPath: real) { return real }
            }
            throw DataError(file: relative, "absolute paths must lie inside a data root (\(roots.joined(separator: ", ")))")
        }
        guard !relative.split(separator: "/").contains("..") else { throw DataError(file: relative, "'..' is not allowed in dataset paths") }
        for root in roots {
            let candidate = (root as NSString).appendingPathComponent(relative)
            guard FileManager.default.fileExists(atPath: candidate) else { continue }
            let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
            let real = URL(fileURLWithPath: candidate).resolvingSymlinksInPath().path
            guard real == realRoot || real.hasPrefix(realRoot + "/") else {
                throw DataError(file: relative, "resolves outside the data root \(root)")
            }
            return candidate
        }
        throw DataError(file: relative, "not found under the data roots (\(roots.joined(separator: ", ")))")
    }

    /// Loads a data source (`limit` applied). `size` is the side length image folders are stored at.
    public static func load(_ source: JobSpec.DataSource, roots: [String], size: Int, allowAbsolute: Bool = true) throws(DataError) -> ImageDataset {
        let path = try resolve(source.path, roots: roots, allowAbsolute: allowAbsolute)
        let ds: ImageDataset
        switch source.format {
        case "idx":
            let prefix = source.split == "test" ? "t10k" : "train"
            func pick(_ name: String) throws(DataError) -> String {
                for candidate in [name + ".gz", name] where FileManager.default.fileExists(atPath: path + "/" + candidate) {
                    return path + "/" + candidate
                }
                throw DataError(file: path + "/" + name, "missing (looked for \(name) and \(name).gz)")
            }
            ds = try Readers.idx(images: try pick("\(prefix)-images-idx3-ubyte"), labels: try? pick("\(prefix)-labels-idx1-ubyte"))
        case "cifar10":
            let names = source.split == "test" ? ["test_batch.bin"] : (1...5).map { "data_batch_\($0).bin" }
            ds = try Readers.cifar(files: names.map { path + "/" + $0 }, hundred: false)
        case "cifar100":
            ds = try Readers.cifar(files: [path + "/" + (source.split == "test" ? "test.bin" : "train.bin")], hundred: true)
        case "folder":
            var isDir: ObjCBool = false
            let sub = path + "/" + source.split
            let dir = FileManager.default.fileExists(atPath: sub, isDirectory: &isDir) && isDir.boolValue ? sub : path
            ds = try Readers.imageFolder(dir, size: size)
        case "npy":
            ds = try Readers.npy(path)
        default:
            throw DataError(file: source.path, "unknown format \(source.format)")
        }
        return ds.prefix(source.limit)
    }
}
