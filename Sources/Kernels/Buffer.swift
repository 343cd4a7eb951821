import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A 64-byte aligned block of memory that returns itself to a size-keyed pool when released.
///
/// Training allocates the same sizes every step; after the first step every request is served from
/// the pool, so the steady-state step allocates no new tensor memory (`BufferPool.stats`).
public final class Buffer: @unchecked Sendable {
    /// Safe to send: the pointer is owned by this object alone; concurrent writes are the caller's
    /// responsibility exactly as for an `UnsafeMutableRawPointer` (tensors are confined to one thread).
    ///
    /// Outside Kernels this is only for handing the memory back to Kernels' own primitives
    /// (`Primitive.execute`, `ElementwiseKernel.reorder`); values are read and written through
    /// `withUnsafeFloats` / `withUnsafeMutableFloats`.
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int

    /// A pooled buffer of at least `byteCount` bytes; contents are unspecified.
    public init(byteCount: Int) {
        let size = max(byteCount, 4)
        self.byteCount = size
        self.pointer = BufferPool.take(size)
    }

    /// The memory as floats, for Kernels' own loops and C calls. Code outside Kernels uses
    /// `withUnsafeFloats` / `withUnsafeMutableFloats`, which scope the pointer's lifetime.
    @usableFromInline var floats: UnsafeMutablePointer<Float> { pointer.assumingMemoryBound(to: Float.self) }

    /// The number of floats the buffer holds (`byteCount / 4`).
    public var floatCount: Int { byteCount / 4 }

    // MARK: The way out of Kernels

    /// Lends the buffer's memory as `floatCount` mutable floats for the duration of `body`: THE
    /// way raw float memory leaves Kernels. The pointer is valid only inside `body`; the buffer
    /// is kept alive until `body` returns, and neither the pointer nor anything derived from it
    /// may escape (stored, returned, captured by an escaping closure). Reads and writes follow
    /// the buffer's layout: for a tensor in a blocked oneDNN layout that is not row-major, and
    /// the count includes any padding. No copy is made.
    @inlinable @inline(__always)
    public func withUnsafeMutableFloats<R, E: Error>(_ body: (UnsafeMutableBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(UnsafeMutableBufferPointer(start: floats, count: floatCount))
    }

    /// Lends the buffer's memory as `floatCount` read-only floats for the duration of `body`;
    /// the same rules as `withUnsafeMutableFloats`.
    @inlinable @inline(__always)
    public func withUnsafeFloats<R, E: Error>(_ body: (UnsafeBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(UnsafeBufferPointer(start: floats, count: floatCount))
    }

    deinit { BufferPool.give(pointer, byteCount) }
}

/// Free lists of aligned blocks, keyed by exact byte size.
public enum BufferPool {
    public struct Stats: Sendable, Equatable {
        /// Blocks obtained from the system allocator.
        public var allocations = 0
        /// Requests served from a free list.
        public var reuses = 0
        /// Bytes currently held in free lists.
        public var pooledBytes = 0
        /// Bytes currently handed out to live buffers.
        public var liveBytes = 0
    }

    /// A free block. Safe to send: a block in a free list is owned by the pool alone.
    private struct Block: @unchecked Sendable { let pointer: UnsafeMutableRawPointer }

    private struct State {
        var free: [Int: [Block]] = [:]
        var stats = Stats()
    }

    /// Safe across threads: all access goes through the mutex; the raw pointers it holds are not
    /// used by anyone while they sit in a free list.
    private final class Box: @unchecked Sendable { let m = Mutex(State()) }
    private static let box = Box()

    /// Bytes kept in free lists before further releases go straight back to the system.
    public static let maxPooledBytes = 8 << 30

    static func take(_ size: Int) -> UnsafeMutableRawPointer {
        if let b = box.m.withLock({ s -> Block? in
            s.stats.liveBytes += size
            if var list = s.free[size], let b = list.popLast() {
                s.free[size] = list
                s.stats.reuses += 1
                s.stats.pooledBytes -= size
                return b
            }
            s.stats.allocations += 1
            return nil
        }) { return b.pointer }
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, 64, size)
        precondition(rc == 0 && raw != nil, "out of memory allocating \(size) bytes")
        return raw!
    }

    static func give(_ p: UnsafeMutableRawPointer, _ size: Int) {
        let block = Block(pointer: p)
        let keep = box.m.withLock { s -> Bool in
            s.stats.liveBytes -= size
            guard s.stats.pooledBytes + size <= maxPooledBytes else { return false }
            s.free[size, default: []].append(block)
            s.stats.pooledBytes += size
            return true
        }
        if !keep { free(p) }
    }

    public static var stats: Stats { box.m.withLock { $0.stats } }
}
