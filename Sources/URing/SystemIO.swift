// What io_uring requests need around them and share with a readiness driver (socket addresses,
// errno, socket calls, threads) lives in SystemIO; URing re-exports it, so a module that imports
// URing names those types as before.
@_exported import SystemIO

/// The error every `URing` call throws: SystemIO's `SystemError` under the name this module has
/// always given it.
public typealias URingError = SystemError
