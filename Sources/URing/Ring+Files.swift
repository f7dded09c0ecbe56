import CURing
import Glibc

// Registered files: the ring's own descriptor table. A socket accepted straight into a slot exists
// only there (no process fd), and requests on it skip the per-op file reference.
extension Ring {
    /// Registers an empty (sparse) file table of `count` slots (`io_uring_register_files_sparse`,
    /// Linux 5.19). Direct accepts then fill it.
    /// - Parameter count: number of slots.
    /// - Throws: ``URingError`` for `io_uring_register_files_sparse` (`EBUSY` if a table exists,
    ///   `EMFILE` if `count` exceeds `RLIMIT_NOFILE`).
    public func registerFiles(sparse count: UInt32) throws(URingError) {
        let result = io_uring_register_files_sparse(ring, count)
        if result < 0 { throw URingError("io_uring_register_files_sparse", result: result) }
    }

    /// Restricts the slots the kernel picks for requests that let it choose (a direct accept or
    /// socket with `IORING_FILE_INDEX_ALLOC`) to `count` slots from `offset`
    /// (`IORING_REGISTER_FILE_ALLOC_RANGE`, Linux 6.0): the others are the caller's to name.
    /// - Throws: ``URingError`` for `io_uring_register_file_alloc_range`.
    public func registerFileAllocRange(offset: UInt32, count: UInt32) throws(URingError) {
        let result = io_uring_register_file_alloc_range(ring, offset, count)
        if result < 0 { throw URingError("io_uring_register_file_alloc_range", result: result) }
    }

    /// Registers `descriptors` as the file table (`io_uring_register_files`); `-1` leaves a slot
    /// empty.
    /// - Parameter descriptors: one fd per slot.
    /// - Throws: ``URingError`` for `io_uring_register_files`.
    public func registerFiles(_ descriptors: [Int32]) throws(URingError) {
        let result = descriptors.withUnsafeBufferPointer {
            io_uring_register_files(ring, $0.baseAddress, UInt32($0.count))
        }
        if result < 0 { throw URingError("io_uring_register_files", result: result) }
    }

    /// Replaces slots starting at `offset` (`io_uring_register_files_update`); `-1` empties a slot,
    /// closing what the ring held there. The caller's fds stay open: the table holds its own
    /// reference.
    /// - Parameters:
    ///   - offset: first slot to replace.
    ///   - descriptors: the new fds.
    /// - Returns: the number of slots updated.
    /// - Throws: ``URingError`` for `io_uring_register_files_update`.
    @discardableResult
    public func updateFiles(at offset: UInt32, _ descriptors: [Int32]) throws(URingError) -> Int {
        var copy = descriptors
        let result = copy.withUnsafeMutableBufferPointer {
            io_uring_register_files_update(ring, offset, $0.baseAddress, UInt32($0.count))
        }
        if result < 0 { throw URingError("io_uring_register_files_update", result: result) }
        return Int(result)
    }

    /// Limits the slots the kernel may choose for ``AcceptTarget/anySlot`` to
    /// `offset ..< offset + count` (`io_uring_register_file_alloc_range`, Linux 6.0), so kernel-chosen
    /// and caller-chosen slots can share one table.
    /// - Parameters:
    ///   - offset: first slot of the range.
    ///   - count: slots in the range.
    /// - Throws: ``URingError`` for `io_uring_register_file_alloc_range`.
    public func setFileAllocationRange(offset: UInt32, count: UInt32) throws(URingError) {
        let result = io_uring_register_file_alloc_range(ring, offset, count)
        if result < 0 { throw URingError("io_uring_register_file_alloc_range", result: result) }
    }

    /// Unregisters the file table (`io_uring_unregister_files`), closing whatever slots still hold.
    /// - Throws: ``URingError`` for `io_uring_unregister_files` (`ENXIO` if none is registered).
    public func unregisterFiles() throws(URingError) {
        let result = io_uring_unregister_files(ring)
        if result < 0 { throw URingError("io_uring_unregister_files", result: result) }
    }
}
