import CURing

/// The calling thread, for the little a ring thread needs to say about itself.
public enum CurrentThread {
    /// Names the calling thread (`prctl(PR_SET_NAME)`; Linux keeps the first 15 bytes), so ring
    /// threads show up by name in `top -H`, `perf` and `/proc/PID/task/*/comm`.
    /// - Parameter name: the name.
    public static func setName(_ name: String) {
        _ = name.withCString { curing_set_thread_name($0) }
    }
}
