import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A durable write that failed: which step, on which path, and the system's reason.
public struct DurableFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Step: String, Sendable {
        case create, write, sync, close, rename
        case syncFolder = "sync the folder of"
    }

    public let step: Step
    /// The file (or, for `syncFolder`, the folder) the step was acting on.
    public let path: String
    public let errno: Int32

    public init(_ step: Step, path: String, errno: Int32) {
        self.step = step; self.path = path; self.errno = errno
    }

    /// The system's words for `errno`, e.g. "No space left on device".
    public var reason: String { String(cString: strerror(errno)) }

    public var description: String { "\(path): cannot \(step.rawValue): \(reason) (errno \(errno))" }
}

/// Whole-file replacement that survives a crash or power loss: afterwards the file holds
/// either its old contents or all of the new ones, never a mix or a prefix.
public enum DurableFile {
    /// Writes `bytes` to `url` through a temporary file in the same folder
    /// (`.<name>.tmp-<pid>`, which `CheckpointStore.removeLeftovers` recognises): every byte
    /// written (short writes continued, `EINTR` retried), fsync, close, rename over `url`, then
    /// fsync of the folder so the rename itself is on disk. On failure the temporary file is
    /// removed, `url` is untouched (unless the folder sync failed, after the rename), and the
    /// error names the step and the reason (`ENOSPC`, `EDQUOT`, `EIO`...).
    public static func write(_ bytes: Data, to url: URL) throws(DurableFileError) {
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())").path
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DurableFileError(.create, path: tmp, errno: errno) }
        var failure: DurableFileError?
        bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + done, raw.count - done)
                if n > 0 { done += n; continue }
                if n < 0 && errno == EINTR { continue }
                // write(2) returning 0 for a non-empty request makes no progress: report it as an I/O error.
                failure = DurableFileError(.write, path: tmp, errno: n < 0 ? errno : EIO)
                return
            }
        }
        if failure == nil, !retryingEINTR({ fsync(fd) }) { failure = DurableFileError(.sync, path: tmp, errno: errno) }
        // close(2) can report a deferred write error (NFS); EINTR from close still closes the descriptor on Linux.
        if close(fd) != 0, errno != EINTR, failure == nil { failure = DurableFileError(.close, path: tmp, errno: errno) }
        if failure == nil, rename(tmp, url.path) != 0 { failure = DurableFileError(.rename, path: url.path, errno: errno) }
        if let failure {
            unlink(tmp)
            throw failure
        }
        let dfd = open(dir.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw DurableFileError(.syncFolder, path: dir.path, errno: errno) }
        defer { close(dfd) }
        // Some file systems cannot fsync a folder (EINVAL, ENOTSUP); there is nothing more to make
        // durable there. A real failure (EIO, ENOSPC) is reported: the rename may not survive a crash.
        if !retryingEINTR({ fsync(dfd) }), errno != EINVAL, errno != ENOTSUP, errno != EOPNOTSUPP {
            throw DurableFileError(.syncFolder, path: dir.path, errno: errno)
        }
    }

    /// Runs a call returning 0 on success, again while it fails with `EINTR`; whether it succeeded.
    private static func retryingEINTR(_ call: () -> Int32) -> Bool {
        while true {
            if call() == 0 { return true }
            if errno != EINTR { return false }
        }
    }
}

extension SafeTensorsFile {
    /// Raw bytes written durably: the same as `DurableFile.write`, under the name the daemon's
    /// callers use (`spec.json` beside a job's checkpoints).
    public static func writeDurably(_ data: Data, to url: URL) throws {
        try DurableFile.write(data, to: url)
    }
}
