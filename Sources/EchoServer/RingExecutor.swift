import Glibc
import Synchronization
import URing

/// The executor whose ring runs on the calling thread, if any (``RingExecutor/isCurrent``).
private let currentExecutorKey: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create")
    return key
}()

/// A ring's thread as a `TaskExecutor`: the jobs of tasks that prefer it (an async connection's
/// task, say) run on the ring's own thread, between loop turns, so a task that awaits its
/// connection's bytes resumes where they arrive, with no thread hop (as SwiftNIO's event loops do
/// for their tasks).
///
/// Jobs enqueued on the ring's own thread (a task there resuming another, a callback resuming a
/// waiting reader) go into a queue only that thread touches, with no lock, and run before the loop
/// next waits for completions. Jobs from any other thread go into a short lock-guarded queue and
/// wake the ring through its eventfd, once per batch (a flag the ring clears before it takes the
/// jobs).
/// Once the ring has exited, jobs go to the global concurrent executor: a task that outlives its
/// ring still finishes (and finds its connection closed).
final class RingExecutor: TaskExecutor, @unchecked Sendable {  // `queue` is only touched under `lock`; `localJobs` only on the ring's thread
    private let lock = PthreadLock(Queue())
    /// Set by an enqueue from another thread, cleared by the ring before it takes the jobs.
    private let wakePending = Atomic<Bool>(false)
    /// Whether jobs are queued: read by the ring before it waits.
    private let queued = Atomic<Bool>(false)
    /// Set when the ring has exited.
    private let exited = Atomic<Bool>(false)
    let wake: WakeDescriptor

    /// Jobs enqueued on the ring's own thread: touched only there.
    nonisolated(unsafe) private var localJobs: [UnownedJob] = []

    struct Queue {
        var jobs: [UnownedJob] = []
        init() { jobs.reserveCapacity(256) }
    }

    init(wake: WakeDescriptor) {
        self.wake = wake
        localJobs.reserveCapacity(256)
    }

    /// The ring's thread starts running jobs: it marks itself as this executor's (a thread-specific
    /// value, cleared when it detaches). Not its `pthread_t`: a thread made after the ring's has
    /// exited may be given the same id, and would pass for the ring's.
    func attach() {
        pthread_setspecific(currentExecutorKey, UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()))
    }

    /// Whether the caller runs on the ring's thread, while the ring runs.
    @inline(__always)
    var isCurrent: Bool {
        pthread_getspecific(currentExecutorKey) == UnsafeMutableRawPointer(Unmanaged.passUnretained(self).toOpaque())
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if isCurrent && !exited.load(ordering: .relaxed) {
            // The ring's own thread (a task it runs resumes another): no lock, no wake-up.
            localJobs.append(job)
            return
        }
        let forward = lock.withLock { queue -> Bool in
            if exited.load(ordering: .acquiring) { return true }
            queue.jobs.append(job)
            queued.store(true, ordering: .releasing)
            return false
        }
        if forward {
            globalConcurrentExecutor.enqueue(ExecutorJob(job))
            return
        }
        if !isCurrent && !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
            wake.signal()
        }
    }

    /// Whether the ring has exited (its jobs now run on the global executor).
    var hasExited: Bool { exited.load(ordering: .acquiring) }

    /// Whether jobs wait to run (the ring must not block before running them). On the ring's
    /// thread.
    @inline(__always)
    var hasJobs: Bool { !localJobs.isEmpty || queued.load(ordering: .acquiring) }

    /// Runs the jobs queued so far, on the ring's thread. Jobs they enqueue wait for the next call.
    func runJobs(into spare: inout [UnownedJob]) {
        if !localJobs.isEmpty {
            swap(&localJobs, &spare)
            run(&spare)
        }
        guard queued.load(ordering: .acquiring) else { return }
        wakePending.store(false, ordering: .releasing)
        lock.withLock { queue in
            swap(&queue.jobs, &spare)
            queued.store(false, ordering: .releasing)
        }
        run(&spare)
    }

    /// Runs `jobs` in order, then empties the array (keeping its capacity).
    private func run(_ jobs: inout [UnownedJob]) {
        let executor = asUnownedTaskExecutor()
        var i = 0
        while i < jobs.count {  // not `for in`: unspecialized, its iterator allocates
            jobs[i].runSynchronously(on: executor)
            i += 1
        }
        jobs.removeAll(keepingCapacity: true)
    }

    /// The ring has exited: what is queued, and what comes later, runs on the global executor. On
    /// the ring's thread.
    func detach() {
        pthread_setspecific(currentExecutorKey, nil)
        let left = lock.withLock { queue -> [UnownedJob] in
            exited.store(true, ordering: .releasing)
            defer { queue.jobs.removeAll() }
            return localJobs + queue.jobs
        }
        localJobs.removeAll()
        for job in left { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }
}
