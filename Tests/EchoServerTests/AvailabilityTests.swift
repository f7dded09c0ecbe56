import EchoServer
import Foundation
import Glibc
import TestSupport
import URing
import XCTest

/// The explanation given when io_uring cannot be used, branch by branch through its pure core.
final class AvailabilityTests: XCTestCase {
    // MARK: io_uring unavailable, explained

    typealias Environment = IOUring.Environment

    func explain(_ errno: Errno, _ environment: Environment) -> String {
        IOUring.explanation(for: errno, in: environment)
    }

    func assertContains(
        _ text: String, _ parts: [String], not absent: [String] = [], file: StaticString = #filePath, line: UInt = #line
    ) {
        for part in parts {
            XCTAssertTrue(text.contains(part), "missing '\(part)' in:\n\(text)", file: file, line: line)
        }
        for part in absent {
            XCTAssertFalse(text.contains(part), "unexpected '\(part)' in:\n\(text)", file: file, line: line)
        }
    }

    func testDisabledForAllNamesTheSysctlItsValueAndTheFix() {
        let text = explain(.notPermitted, Environment(disabled: 2, group: -1, seccompMode: 0))
        XCTAssertTrue(text.hasPrefix("io_uring is unavailable: io_uring_setup failed with EPERM"), text)
        assertContains(
            text,
            [
                "kernel.io_uring_disabled is 2", "/proc/sys/kernel/io_uring_disabled", "disabled for every process",
                "Fix: as root, sysctl -w kernel.io_uring_disabled=0",
            ], not: ["seccomp", "No cause found", "kernel.io_uring_group"])
    }

    func testRestrictedToAGroupNamesTheGroupAndBothFixes() {
        let withGroup = explain(.notPermitted, Environment(disabled: 1, group: 1001, seccompMode: 0))
        assertContains(
            withGroup,
            [
                "kernel.io_uring_disabled is 1", "only processes in the group kernel.io_uring_group (now gid 1001)",
                "CAP_SYS_ADMIN", "sysctl -w kernel.io_uring_disabled=0", "member of that group",
            ], not: ["disabled for every process", "No cause found"])
        let noGroup = explain(.notPermitted, Environment(disabled: 1, group: -1, seccompMode: 0))
        assertContains(noGroup, ["(now -1: no group is set)"], not: ["gid"])
    }

    func testSeccompFilterInAContainerNamesTheDefaultProfilesAndHowToAllowIoUring() {
        let text = explain(
            .notPermitted,
            Environment(
                disabled: 0, group: -1, seccompMode: 2,
                containerHints: ["/.dockerenv exists", "/proc/1/cgroup mentions docker"]))
        assertContains(
            text,
            [
                "in a container (/.dockerenv exists; /proc/1/cgroup mentions docker)",
                "under a seccomp filter (Seccomp: 2 in /proc/self/status)",
                "Docker's default seccomp profile (since Docker 25) and containerd's (since 2.0",
                "docker run --security-opt seccomp=unconfined",
                "io_uring_setup, io_uring_enter and io_uring_register", "securityContext.seccompProfile",
            ], not: ["kernel.io_uring_disabled is", "No cause found", "CONFIG_IO_URING"])
        // A filter without a container (systemd's SystemCallFilter=, a sandbox) is still named.
        let bare = explain(.notPermitted, Environment(disabled: 0, seccompMode: 2))
        assertContains(bare, ["This process runs under a seccomp filter (Seccomp: 2"], not: ["in a container"])
    }

    func testContainerWithUnknownOrNoSeccompFilter() {
        let docker = ["/.dockerenv exists"]
        let unknown = explain(.notPermitted, Environment(disabled: 0, seccompMode: nil, containerHints: docker))
        assertContains(unknown, ["seccomp mode could not be read", "--security-opt seccomp=unconfined"])
        let none = explain(.notPermitted, Environment(disabled: 0, seccompMode: 0, containerHints: docker))
        assertContains(
            none, ["under no seccomp filter (Seccomp: 0", "no seccomp profile is the cause", "AppArmor or SELinux"],
            not: ["seccomp=unconfined", "No cause found"])
    }

    func testKernelWithoutIoUringForENOSYS() {
        let text = explain(.notImplemented, Environment(disabled: nil, seccompMode: 0, kernelRelease: "5.10.0-custom"))
        XCTAssertTrue(text.hasPrefix("io_uring is unavailable: io_uring_setup failed with ENOSYS"), text)
        assertContains(
            text,
            ["The kernel (5.10.0-custom) was built without io_uring (CONFIG_IO_URING is not set)", "CONFIG_IO_URING=y"],
            not: ["seccomp", "No cause found", "sysctl -w"])
        // The sysctl exists only where io_uring is built in: then something else answers ENOSYS.
        let sandbox = explain(.notImplemented, Environment(disabled: 0, seccompMode: 0, kernelRelease: "6.8.0"))
        assertContains(sandbox, ["has io_uring", "a sandbox answers ENOSYS"], not: ["built without io_uring"])
        // ENOSYS under a filter names both causes.
        let both = explain(.notImplemented, Environment(disabled: nil, seccompMode: 2))
        assertContains(both, ["Seccomp: 2", "built without io_uring"])
    }

    func testEveryCauseFoundIsListedWithItsFix() {
        let text = explain(
            .notPermitted, Environment(disabled: 2, seccompMode: 2, containerHints: ["/.dockerenv exists"]))
        assertContains(text, ["kernel.io_uring_disabled is 2", "Seccomp: 2"])
        let causes = text.split(separator: "\n").filter { $0.hasPrefix("- ") }
        let fixes = text.split(separator: "\n").filter { $0.hasPrefix("  Fix: ") }
        XCTAssertEqual(causes.count, 2, text)
        XCTAssertEqual(fixes.count, 2, text)
    }

    func testNoVisibleCauseSaysSoAndWhereToLook() {
        let zero = explain(.notPermitted, Environment(disabled: 0, group: -1, seccompMode: 0))
        assertContains(zero, ["No cause found: kernel.io_uring_disabled is 0", "SELinux, AppArmor", "dmesg"])
        let absent = explain(.notPermitted, Environment(disabled: nil, seccompMode: 0))
        assertContains(absent, ["kernel.io_uring_disabled is absent (a kernel before 6.6)"])
        let other = explain(.invalidArgument, Environment(disabled: 2, seccompMode: 2))
        assertContains(
            other, ["EINVAL does not mean io_uring is switched off"], not: ["Fix:", "kernel.io_uring_disabled is 2"])
    }

    func testOnlyARefusedRingSetupCountsAsUnavailable() {
        let setup = "io_uring_queue_init_params"
        XCTAssertTrue(IOUring.isUnavailable(URingError(setup, errno: .notPermitted)))
        XCTAssertTrue(IOUring.isUnavailable(URingError(setup, errno: .notImplemented)))
        XCTAssertFalse(IOUring.isUnavailable(URingError(setup, errno: .invalidArgument)))
        XCTAssertFalse(IOUring.isUnavailable(URingError(setup, errno: .noMemory)))
        XCTAssertFalse(IOUring.isUnavailable(URingError("io_uring_register_files_sparse", errno: .notPermitted)))
        XCTAssertFalse(IOUring.isUnavailable(URingError("bind", errno: .notPermitted)))
    }

    func testServerErrorCarriesTheExplanationForARefusedRingSetupOnly() {
        let refused = ServerError(setupFailure: URingError("io_uring_queue_init_params", errno: .notPermitted))
        guard case .ioUringUnavailable(let text) = refused else { return XCTFail("\(refused)") }
        XCTAssertEqual(text, IOUring.unavailableReason(for: .notPermitted))
        XCTAssertEqual(refused.description, text, "the description is the full explanation")
        XCTAssertTrue(text.contains("\n  Fix: "), text)
        let bind = URingError("bind", errno: .addressInUse)
        XCTAssertEqual(ServerError(setupFailure: bind), .setup(bind))
    }

    func testTheEnvironmentIsReadFromThisMachine() throws {
        let environment = IOUring.Environment.current()
        let status = try readFile("/proc/self/status")
        let seccomp = status.split(separator: "\n").first { $0.hasPrefix("Seccomp:") }
        let mode = seccomp.flatMap { Int($0.dropFirst("Seccomp:".count).filter(\.isNumber)) }
        XCTAssertEqual(environment.seccompMode, mode)
        let disabled = (try? readFile("/proc/sys/kernel/io_uring_disabled")).flatMap { Int($0.filter(\.isNumber)) }
        XCTAssertEqual(environment.disabled, disabled)
        XCTAssertEqual(environment.containerHints.contains("/.dockerenv exists"), access("/.dockerenv", F_OK) == 0)
        XCTAssertEqual(environment.kernelRelease, Sockets.kernelRelease)
    }
}
