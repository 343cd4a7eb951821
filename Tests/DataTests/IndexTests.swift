import Data
import Foundation
import MoCo
import TestSupport
import Testing

/// Indexing large datasets without decoding: brace patterns, tar headers, image folders, the
/// index cache's freshness check, header probes (decompression bombs) and the inspect report.
@Suite struct IndexTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/images")

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("index-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    // MARK: - Brace patterns

    @Test(arguments: [
        ("s.tar", ["s.tar"]),
        ("s-{000..002}.tar", ["s-000.tar", "s-001.tar", "s-002.tar"]),
        ("s-{8..10}.tar", ["s-8.tar", "s-9.tar", "s-10.tar"]),
        ("{a,b}-{1..2}.tar", ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]),
    ])
    func bracePatternsExpand(_ pattern: String, _ names: [String]) throws {
        #expect(try BracePattern.expand(pattern) == names)
    }

    @Test(arguments: [
        ("s-{5..1}.tar", "s-{5..1}.tar: {5..1} is not a range like {000..099}"),
        ("s-{1..}.tar", "s-{1..}.tar: {1..} is not a range like {000..099}"),
        ("s-{a}.tar", "s-{a}.tar: {a} is neither a range nor a list"),
        ("s-{1..2.tar", "s-{1..2.tar: a '{' without its '}'"),
        ("s-}.tar", "s-}.tar: a '}' without its '{'"),
        ("s-{0..9999999}.tar", "s-{0..9999999}.tar: {0..9999999} names more than 1000000 shards"),
    ])
    func badBracePatternsSayWhy(_ pattern: String, _ message: String) {
        do { _ = try BracePattern.expand(pattern); Issue.record("\(pattern) expanded") } catch { #expect(error.description == message) }
    }

    // MARK: - Tar shards

    /// A shard with plain members, a GNU long name, a pax path, a directory, a `.cls` label per
    /// sample and a sample without an image: grouped by key, labels read, problems named.
    @Test func shardMembersGroupByKey() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let png = try Data(contentsOf: Self.fixtures.appendingPathComponent("folder/cat/a.png"))
        let jpg = try Data(contentsOf: Self.fixtures.appendingPathComponent("folder/cat/c.jpg"))
        let longKey = "deep/" + String(repeating: "x", count: 120)
        var tar = Tar()
        tar.directory("deep/")
        tar.file("s0001.png", png); tar.file("s0001.cls", Data("3\n".utf8))
        tar.file("s0002.jpg", jpg); tar.file("s0002.cls", Data("1".utf8)); tar.file("s0002.json", Data("{}".utf8))
        tar.file(longKey + ".jpg", jpg, long: .gnu); tar.file(longKey + ".cls", Data("0".utf8), long: .gnu)
        tar.file("pax/s0004.png", png, long: .pax); tar.file("pax/s0004.cls", Data("2".utf8))
        tar.file("s0005.txt", Data("no image".utf8)); tar.file("s0005.seg.png", png)   // another field, not the image
        try tar.bytes().write(to: dir.appendingPathComponent("a.tar"))
        let index = try ImageIndex.shards([dir.appendingPathComponent("a.tar").path])
        #expect(index.names == ["a.tar:s0001.png", "a.tar:s0002.jpg", "a.tar:\(longKey).jpg", "a.tar:pax/s0004.png"])
        #expect(index.labels == [3, 1, 0, 2])
        #expect(index.problems == [ImageIndex.Problem(name: "a.tar:s0005", message: "no .jpg, .jpeg or .png member (has seg.png, txt)")])
        #expect(try index.bytes(of: 0) == Array(png) && index.bytes(of: 2) == Array(jpg))
    }

    /// A shard cut short keeps the samples before the cut and names the cut; a file that is not
    /// a tar at all yields no samples and says so.
    @Test func damagedShardsKeepWhatIsWhole() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let png = try Data(contentsOf: Self.fixtures.appendingPathComponent("folder/cat/a.png"))
        var tar = Tar()
        for i in 0..<3 { tar.file("s\(i).png", png) }
        // Cut 20 bytes into the third member's data (each member: a header and one data block).
        try tar.bytes().prefix(2 * 1024 + 512 + 20).write(to: dir.appendingPathComponent("cut.tar"))
        let index = try ImageIndex.shards([dir.appendingPathComponent("cut.tar").path])
        #expect(index.names == ["cut.tar:s0.png", "cut.tar:s1.png"])
        #expect(index.problems.count == 1 && index.problems[0].message.hasPrefix("cut short: a member needs"), "\(index.problems)")
        try Data(repeating: 7, count: 2048).write(to: dir.appendingPathComponent("junk.tar"))
        #expect(throws: DataError.self) { try ImageIndex.shards([dir.appendingPathComponent("junk.tar").path]) }
        do { _ = try ImageIndex.shards([dir.appendingPathComponent("junk.tar").path]) } catch {
            #expect(error.message.contains("not a tar header at byte 0"), "\(error)")
        }
    }

    // MARK: - Image folders

    @Test func classFoldersAreLabelsAndNestedImagesCount() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let fm = FileManager.default
        for c in ["cat", "dog"] { try fm.copyItem(at: Self.fixtures.appendingPathComponent("folder/\(c)"), to: dir.appendingPathComponent(c)) }
        try fm.createDirectory(at: dir.appendingPathComponent("dog/puppies"), withIntermediateDirectories: true)
        try fm.copyItem(at: Self.fixtures.appendingPathComponent("folder/dog/e.jpg"), to: dir.appendingPathComponent("dog/puppies/p.jpg"))
        try Data("x".utf8).write(to: dir.appendingPathComponent("dog/.hidden.png"))
        try Data("x".utf8).write(to: dir.appendingPathComponent("dog/notes.txt"))
        try fm.createSymbolicLink(atPath: dir.appendingPathComponent("dog/elsewhere").path, withDestinationPath: Self.fixtures.appendingPathComponent("corrupt").path)
        let index = try ImageIndex.folder(dir.path)
        #expect(index.classNames == ["cat", "dog"])
        #expect(index.names == ["cat/a.png", "cat/b.png", "cat/c.jpg", "dog/d.png", "dog/e.jpg", "dog/f.png", "dog/puppies/p.jpg"])
        #expect(index.labels == [0, 0, 0, 1, 1, 1, 1])
        let flat = try ImageIndex.folder(Self.fixtures.appendingPathComponent("corrupt").path)
        #expect(flat.labels == nil && flat.count == 5)
    }

    /// The cached index is used while nothing changed, and rebuilt when an image is rewritten
    /// or one is added; the cache lives where it is told (a job's directory), not in the data.
    @Test func cachedIndexFollowsTheFiles() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = dir.appendingPathComponent("data"), cache = dir.appendingPathComponent("job/index.json")
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("folder"), to: data)
        func load() throws -> (ImageIndex, Bool) { try ImageIndex.cached(at: cache) { () throws(DataError) in try ImageIndex.folder(data.path) } }
        let (first, cached1) = try load()
        #expect(!cached1 && FileManager.default.fileExists(atPath: cache.path))
        let (again, cached2) = try load()
        #expect(cached2 && again == first)
        // An image rewritten (another size and time).
        usleep(10_000)
        try Data(contentsOf: Self.fixtures.appendingPathComponent("folder/dog/e.jpg")).write(to: data.appendingPathComponent("cat/a.png"))
        #expect(!first.isCurrent())
        let (rebuilt, cached3) = try load()
        #expect(!cached3 && rebuilt.lengths != first.lengths)
        // An image added: its folder's time changes.
        usleep(10_000)
        try FileManager.default.copyItem(at: data.appendingPathComponent("cat/b.png"), to: data.appendingPathComponent("cat/z.png"))
        let (grown, cached4) = try load()
        #expect(!cached4 && grown.count == first.count + 1)
        #expect(!FileManager.default.fileExists(atPath: data.appendingPathComponent("index.json").path))
    }

    // MARK: - Headers, bombs and reports

    @Test func headersAreReadAndBombsRefused() throws {
        let jpg = try [UInt8](Data(contentsOf: Self.fixtures.appendingPathComponent("folder/cat/c.jpg")))
        #expect(try ImageProbe.header(jpg, file: "c.jpg") == ImageHeader(format: .jpeg, width: 8, height: 6, channels: 3))
        let png = try [UInt8](Data(contentsOf: Self.fixtures.appendingPathComponent("folder/cat/a.png")))
        #expect(try ImageProbe.header(png, file: "a.png").format == .png)
        // A PNG whose header declares 100000 x 100000 pixels: refused before anything is decoded.
        let bomb = Fixtures.pngHeader(width: 100_000, height: 100_000)
        do { _ = try Readers.decode(bomb, file: "bomb.png"); Issue.record("a bomb decoded") } catch {
            #expect(error.description == "bomb.png: declares 100000x100000 pixels, more than the 67108864 (8192x8192) mocod decodes (a decompression bomb, or far beyond what training needs)")
        }
        do { _ = try ImageProbe.header([], file: "e.jpg") } catch { #expect(error.description == "e.jpg: empty file") }
        do { _ = try ImageProbe.header(Array("GIF89a...".utf8), file: "g.gif") } catch { #expect(error.message.hasPrefix("neither a PNG nor a JPEG")) }
    }

    /// `moco data inspect`'s report: every bad kind counted and named, classes from `.cls`.
    @Test func reportsCountAndNameBadImages() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("corrupt"), to: dir.appendingPathComponent("bad"))
        try Data(Fixtures.pngHeader(width: 100_000, height: 100_000)).write(to: dir.appendingPathComponent("bad/bomb.png"))
        let headers = try DataSources.inspect(format: "folder", path: "bad", split: nil, roots: [dir.path], decode: false)
        #expect(headers.count == 6 && headers.readable == 2 && headers.errors == 4, "\(headers.text)")
        let full = try DataSources.inspect(format: "folder", path: "bad", split: nil, roots: [dir.path], decode: true)
        #expect(full.count == 6 && full.readable == 1 && full.errors == 5, "\(full.text)")
        #expect(full.first_errors.contains { $0.hasPrefix("bomb.png: declares 100000x100000") })
        #expect(full.first_errors.contains("empty.jpg: empty file"))
        #expect(full.first_errors.contains { $0.hasPrefix("truncated.png: corrupt PNG") })
        // A file that cannot be read when its turn comes (gone since it was indexed).
        let index = try ImageIndex.folder(dir.appendingPathComponent("bad").path)
        try FileManager.default.removeItem(at: dir.appendingPathComponent("bad/truncated.jpg"))
        let later = DatasetReport.inspect(index, path: "bad", decode: false)
        #expect(later.first_errors.contains { $0.hasSuffix("bad/truncated.jpg: no such file") }, "\(later.first_errors)")

        let png = try Data(contentsOf: Self.fixtures.appendingPathComponent("folder/cat/a.png"))
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("shards"), withIntermediateDirectories: true)
        for s in 0..<2 {
            var tar = Tar()
            for i in 0..<3 { tar.file("k\(s)\(i).png", png); tar.file("k\(s)\(i).cls", Data("\(i % 2)".utf8)) }
            try tar.bytes().write(to: dir.appendingPathComponent("shards/train-00\(s).tar"))
        }
        let shards = try DataSources.inspect(format: "tar", path: "shards/train-{000..001}.tar", split: nil, roots: [dir.path], decode: true)
        #expect(shards.count == 6 && shards.readable == 6 && shards.errors == 0)
        #expect(shards.classes == [.init(name: "0", count: 4), .init(name: "1", count: 2)])
        let folder = try DataSources.inspect(format: "tar", path: "shards", split: nil, roots: [dir.path], decode: false)
        #expect(folder.count == 6)
        do { _ = try DataSources.inspect(format: "tar", path: "shards/train-{000..002}.tar", split: nil, roots: [dir.path], decode: false) } catch {
            #expect(error.description == "shards/train-002.tar: no such shard", "\(error)")
        }
    }

    /// A PNG signature and an IHDR chunk declaring `width x height` (8-bit RGB), nothing more.
}

/// A minimal tar writer for fixtures: ustar headers, GNU long names ('L') or pax paths ('x').
struct Tar {
    enum LongName { case gnu, pax }
    private var out = Data()

    mutating func directory(_ name: String) { header(name, size: 0, type: "5") }

    mutating func file(_ name: String, _ data: Data, long: LongName? = nil) {
        switch long {
        case .gnu?:
            var n = Data(name.utf8); n.append(0)
            header("././@LongLink", size: n.count, type: "L"); append(n)
            header(String(name.suffix(99)), size: data.count, type: "0")
        case .pax?:
            var record = " path=\(name)\n"
            record = "\(record.utf8.count + String(record.utf8.count).count)" + record
            header("PaxHeader", size: record.utf8.count, type: "x"); append(Data(record.utf8))
            header("ignored-name", size: data.count, type: "0")
        case nil:
            header(name, size: data.count, type: "0")
        }
        append(data)
    }

    private mutating func append(_ d: Data) {
        out.append(d)
        out.append(Data(count: (512 - d.count % 512) % 512))
    }

    private mutating func header(_ name: String, size: Int, type: Character) {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ at: Int) { for (i, b) in s.utf8.enumerated() { h[at + i] = b } }
        put(String(name.prefix(100)), 0)
        put("0000644", 100); put("0000000", 108); put("0000000", 116)
        put(String(format: "%011o", size), 124); put("00000000000", 136)
        h[156] = type.asciiValue!
        put("ustar", 257); put("00", 263)
        for i in 148..<156 { h[i] = 32 }
        let sum = h.reduce(0) { $0 + Int($1) }
        put(String(format: "%06o", sum), 148); h[154] = 0; h[155] = 32
        out.append(contentsOf: h)
    }

    func bytes() -> Data { out + Data(count: 1024) }
}
