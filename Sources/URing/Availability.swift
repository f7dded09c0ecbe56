import Glibc

/// Whether this process may use io_uring and, where it may not, why and how to allow it.
///
/// `io_uring_setup` fails with `EPERM` where io_uring is switched off by `kernel.io_uring_disabled`
/// (Linux 6.6) or blocked by a seccomp filter (Docker's and containerd's default profiles block
/// it), and with `ENOSYS` where the kernel was built without it. ``unavailableReason(for:)`` reads
/// what the machine shows about each cause and says which apply and what to change (tests build
/// the same text from given inputs, so every branch is tested without changing the machine).
public enum IOUring {
    /// What the machine shows about io_uring's availability: the inputs of
    /// the explanation (tests build it from given inputs).
    package struct Environment: Sendable, Hashable {
        /// `/proc/sys/kernel/io_uring_disabled` (0 allowed, 1 restricted to a group, 2 disabled);
        /// `nil` where the file is absent (kernels before 6.6, or built without io_uring).
        package var disabled: Int?
        /// `/proc/sys/kernel/io_uring_group`: the group allowed when ``disabled`` is 1 (-1: none).
        package var group: Int?
        /// The `Seccomp:` field of `/proc/self/status`: 0 none, 1 strict, 2 filter; `nil` unknown.
        package var seccompMode: Int?
        /// Signs that the process runs in a container, each said as found (`/.dockerenv exists`).
        package var containerHints: [String]
        /// The kernel release (`uname -r`).
        package var kernelRelease: String?

        /// Inputs as given.
        /// - Parameters:
        ///   - disabled: the value of `kernel.io_uring_disabled`, `nil` where absent.
        ///   - group: the value of `kernel.io_uring_group`, `nil` where absent.
        ///   - seccompMode: the process's seccomp mode, `nil` where unknown.
        ///   - containerHints: signs of a container, empty for none.
        ///   - kernelRelease: the kernel release.
        package init(
            disabled: Int? = nil, group: Int? = nil, seccompMode: Int? = nil, containerHints: [String] = [],
            kernelRelease: String? = nil
        ) {
            self.disabled = disabled
            self.group = group
            self.seccompMode = seccompMode
            self.containerHints = containerHints
            self.kernelRelease = kernelRelease
        }

        /// What this machine shows now: the two sysctls, `/proc/self/status`, `/.dockerenv`,
        /// `/run/.containerenv`, `/proc/1/cgroup` and `uname(2)`.
        package static func current() -> Environment {
            func number(_ path: String) -> Int? { IOUring.readProcFile(path).flatMap { Int(IOUring.trimmed($0)) } }
            var environment = Environment()
            environment.disabled = number("/proc/sys/kernel/io_uring_disabled")
            environment.group = number("/proc/sys/kernel/io_uring_group")
            if let status = IOUring.readProcFile("/proc/self/status") {
                for line in status.split(separator: "\n") where line.hasPrefix("Seccomp:") {
                    environment.seccompMode = Int(IOUring.trimmed(line.dropFirst("Seccomp:".count)))
                }
            }
            for path in ["/.dockerenv", "/run/.containerenv"] where access(path, F_OK) == 0 {
                environment.containerHints.append("\(path) exists")
            }
            if let cgroup = IOUring.readProcFile("/proc/1/cgroup") {
                for runtime in ["docker", "containerd", "kubepods", "libpod"] where cgroup.contains(runtime) {
                    environment.containerHints.append("/proc/1/cgroup mentions \(runtime)")
                }
            }
            let release = Sockets.kernelRelease
            environment.kernelRelease = release.isEmpty ? nil : release
            return environment
        }
    }

    /// Whether `error` says io_uring cannot be used here at all: ring setup
    /// (`io_uring_queue_init_params`) refused with `EPERM` or `ENOSYS`.
    /// - Parameter error: an error from ``Ring/init(_:)`` or any other `URing` call.
    /// - Returns: `true` for those two refusals of ring setup only.
    public static func isUnavailable(_ error: URingError) -> Bool {
        error.operation == "io_uring_queue_init_params"
            && (error.errno == .notPermitted || error.errno == .notImplemented)
    }

    /// Why ring setup failed with `errno` on this machine, and how to allow io_uring: the sysctl
    /// `kernel.io_uring_disabled`, a container's seccomp profile, a kernel without io_uring.
    /// - Parameter errno: what `io_uring_setup` returned, `EPERM` or `ENOSYS`.
    /// - Returns: several lines: a first line naming the failure, then each cause found with its fix.
    public static func unavailableReason(for errno: Errno) -> String {
        explanation(for: errno, in: .current())
    }

    /// ``unavailableReason(for:)`` from given inputs (pure: reads nothing).
    /// - Parameters:
    ///   - errno: what `io_uring_setup` returned.
    ///   - environment: what the machine shows.
    /// - Returns: a first line naming the failure, then `- cause` and `  Fix: ...` lines.
    package static func explanation(for errno: Errno, in environment: Environment) -> String {
        var lines = ["io_uring is unavailable: io_uring_setup failed with \(errno)."]
        func cause(_ text: String, fix: String) {
            lines.append("- " + text)
            lines.append("  Fix: " + fix)
        }
        guard errno == .notPermitted || errno == .notImplemented else {
            lines.append("- \(errno.name) does not mean io_uring is switched off here; see io_uring_setup(2).")
            return lines.joined(separator: "\n")
        }
        let sysctlFix =
            "as root, sysctl -w kernel.io_uring_disabled=0 (and kernel.io_uring_disabled = 0 in a file of "
            + "/etc/sysctl.d/ to keep it after a reboot)."
        switch environment.disabled {
        case 2?:
            cause(
                "kernel.io_uring_disabled is 2 (/proc/sys/kernel/io_uring_disabled): io_uring is disabled for "
                    + "every process.", fix: sysctlFix)
        case 1?:
            let group =
                environment.group.map { $0 >= 0 ? "(now gid \($0))" : "(now -1: no group is set)" } ?? "(unknown)"
            cause(
                "kernel.io_uring_disabled is 1 (/proc/sys/kernel/io_uring_disabled): only processes in the group "
                    + "kernel.io_uring_group \(group) or with CAP_SYS_ADMIN may create rings.",
                fix: String(sysctlFix.dropLast()) + "; or run the server as a member of that group "
                    + "(as root, sysctl -w kernel.io_uring_group=GID chooses it).")
        default:
            break
        }
        let container =
            environment.containerHints.isEmpty
            ? "" : " in a container (\(environment.containerHints.joined(separator: "; ")))"
        let seccompFix =
            "allow io_uring_setup, io_uring_enter and io_uring_register: docker run --security-opt "
            + "seccomp=unconfined ..., or a custom profile (a copy of the default with those three system calls "
            + "added to its SCMP_ACT_ALLOW list) given as docker run --security-opt seccomp=PROFILE.json ...; "
            + "in Kubernetes, securityContext.seccompProfile of type Unconfined or Localhost."
        let defaultProfiles =
            "Docker's default seccomp profile (since Docker 25) and containerd's (since 2.0, and so Kubernetes' "
            + "RuntimeDefault) block io_uring_setup, io_uring_enter and io_uring_register."
        if environment.seccompMode == 2 {
            cause(
                "This process runs\(container) under a seccomp filter (Seccomp: 2 in /proc/self/status). "
                    + defaultProfiles, fix: seccompFix)
        } else if environment.seccompMode == nil && !environment.containerHints.isEmpty {
            cause(
                "This process runs\(container), and its seccomp mode could not be read. " + defaultProfiles,
                fix: seccompFix)
        } else if !environment.containerHints.isEmpty && errno == .notPermitted {
            cause(
                "This process runs\(container) but under no seccomp filter (Seccomp: \(environment.seccompMode!) "
                    + "in /proc/self/status), so no seccomp profile is the cause; an AppArmor or SELinux policy "
                    + "of the container runtime may deny io_uring.",
                fix: "look for the denial in the kernel log (dmesg, journalctl -k) and allow io_uring in that "
                    + "policy (for Docker, docker run --security-opt apparmor=unconfined ... to confirm).")
        }
        if errno == .notImplemented {
            let kernel = environment.kernelRelease.map { " (\($0))" } ?? ""
            if environment.disabled == nil {
                cause(
                    "The kernel\(kernel) was built without io_uring (CONFIG_IO_URING is not set), or is older "
                        + "than Linux 5.1.",
                    fix: "run on a kernel built with CONFIG_IO_URING=y (check with grep CONFIG_IO_URING "
                        + "/boot/config-$(uname -r)).")
            } else if environment.seccompMode != 2 {
                cause(
                    "The kernel\(kernel) has io_uring (kernel.io_uring_disabled exists), so a sandbox answers "
                        + "ENOSYS in its place (gVisor, or a seccomp filter set up before this process).",
                    fix: "run the server outside that sandbox, or allow io_uring_setup, io_uring_enter and "
                        + "io_uring_register in it.")
            }
        }
        if lines.count == 1 {
            let setting = environment.disabled.map { "is \($0)" } ?? "is absent (a kernel before 6.6)"
            let seccomp = environment.seccompMode == nil ? "seccomp mode unknown" : "no seccomp filter"
            cause(
                "No cause found: kernel.io_uring_disabled \(setting), \(seccomp), no container seen. A "
                    + "Linux security module (SELinux, AppArmor) may deny io_uring_setup.",
                fix: "look for the denial in the kernel or audit log (dmesg, journalctl -k, ausearch -m avc).")
        }
        return lines.joined(separator: "\n")
    }

    /// The opcodes the io_uring driver needs whatever the kernel's optional features: accept,
    /// cancel, linked timeout, connect, close, read (the wake-up eventfd), send and sendmsg, recv,
    /// timeout (the tick), shutdown (Linux 5.11 has them all).
    public static let requiredOpcodes: [Opcode] = [
        .accept, .asyncCancel, .linkTimeout, .connect, .close, Opcode(rawValue: 22), .send, .recv,
        Opcode(rawValue: 9), .timeout, .shutdown,
    ]

    /// Why a server cannot run on io_uring here, in one line, or nil when it can: ring setup
    /// refused (`EPERM`: a seccomp filter or `kernel.io_uring_disabled`; `ENOSYS`: a kernel without
    /// io_uring, or gVisor; `ENOMEM`: the locked-memory limit), the opcode probe refused, or
    /// opcodes it needs missing (``requiredOpcodes``). One small ring, made and closed.
    public static func refusal() -> String? {
        let ring: Ring
        do {
            ring = try Ring(RingOptions(entries: 2, flagPreference: [[]]))
        } catch {
            return "io_uring is refused here: \(error) (\(shortCause(for: error.errno, in: .current())))"
        }
        let probe: Probe
        do {
            probe = try ring.probe()
        } catch {
            return "io_uring is refused here: its opcode probe failed (\(error))"
        }
        let missing = requiredOpcodes.filter { !probe.supports($0) }
        guard missing.isEmpty else {
            return "io_uring here lacks \(missing.map(\.description).joined(separator: ", ")) (Linux 5.11 has them)"
        }
        return nil
    }

    /// The cause of a refused ring setup in a few words (``unavailableReason(for:)`` says it whole).
    package static func shortCause(for errno: Errno, in environment: Environment) -> String {
        switch errno {
        case .notPermitted:
            if environment.disabled == 2 { return "kernel.io_uring_disabled is 2" }
            if environment.disabled == 1 { return "kernel.io_uring_disabled is 1 and this process is not in its group" }
            if environment.seccompMode == 2 {
                return "a seccomp filter: a container's default profile (Docker 25+, containerd 2.0, Kubernetes RuntimeDefault)"
            }
            return "refused by the system's security policy"
        case .notImplemented:
            return environment.disabled == nil ? "the kernel has no io_uring" : "a sandbox answers ENOSYS (gVisor)"
        case .noMemory:
            return "the locked-memory limit (RLIMIT_MEMLOCK) is too low for a ring"
        default:
            return "\(errno)"
        }
    }

    private static func trimmed(_ text: some StringProtocol) -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" }
        guard let first = text.firstIndex(where: { !blank($0) }), let last = text.lastIndex(where: { !blank($0) })
        else { return "" }
        return String(text[first...last])
    }

    /// A small file of /proc or /sys read whole (`open`/`read`), or `nil` where it cannot be read.
    private static func readProcFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && Errno.current == .interrupted { continue }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Posix {
    /// The machine's physical memory in bytes: `sysconf(_SC_PHYS_PAGES) × sysconf(_SC_PAGESIZE)`,
    /// or `nil` where `sysconf` cannot tell. A container's memory limit (cgroup) is not counted.
    package static var physicalMemoryBytes: Int? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES))
        let pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return nil }
        let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? Int.max : bytes
    }
}
