import Dispatch
import Logging
import Metrics
import ServiceLifecycle
import SocketPool
import Synchronization
import URing

// One ring thread's life: set up its ring and loop, serve, and hold its descriptor until every
// ring has ended.
extension Server {
    /// One ring thread: sets up its ring and loop (with the receive strategy the kernel granted),
    /// reports ready, waits until every ring exists, and serves until stopped.
    // The echo server's loop, specialised here (its handler and receive paths known at compile
    // time, no witness-table call per completion); other handlers run the generic loop.
    @_specialize(where Handler == EchoHandler)
    func runRing(
        _ i: Int, _ listeners: RingListeners, mailboxes: Mailboxes, ready: DispatchSemaphore, go: DispatchGroup
    ) {
        if state.withLock({ $0.driver }) == .epoll { return runEpollRing(i, listeners, mailboxes: mailboxes, ready: ready, go: go) }
        do throws(URingError) {
            let faults = state.withLock { $0.faults }
            var setup = try RingSetup(
                configuration, ring: i, logger: logger, extraSessions: listeners.extraSessions, faults: faults)
            let plan = setup.plan
            let buffers = setup.buffers.take()
            let maxHeld = ReceivePlan.maxHeldPerConnection(configuration)
            let provided: ProvidedSegments =
                switch plan {
                case .sessionBuffers: .none
                case .bufferRing:
                    .buffers(
                        base: buffers!.buffer(0).baseAddress!, count: configuration.bufferRingEntries,
                        size: configuration.bufferSize)
                case .incremental:
                    .slices(
                        count: IncrementalBufferReceiver.sliceCapacity(sessions: setup.capacity, maxHeldPerConnection: maxHeld))
                }
            let core = try URingCore(
                configuration: configuration, setup: setup, provided: provided, ringIndex: i, mailboxes: mailboxes,
                logger: logger, listeners: listeners)
            mailboxes.ports[i].descriptor.store(core.ring.descriptor, ordering: .releasing)
            switch plan {
            case .sessionBuffers:
                let receiver = SessionBufferReceiver(sessionFirst: core.queue.sessionFirst)
                serve(core, receiver, listeners, ready: ready, go: go)
            case .bufferRing(let bundles, let limit):
                let receiver = BufferRingReceiver(
                    buffers: buffers!, sessions: core.sessions.capacity, maxHeldPerConnection: maxHeld, bundles: bundles,
                    limit: limit)
                serve(core, receiver, listeners, ready: ready, go: go)
            case .incremental:
                let receiver = IncrementalBufferReceiver(
                    buffers: buffers!, sessions: core.sessions.capacity, maxHeldPerConnection: maxHeld,
                    unitSize: configuration.bufferSize, queue: core.queue)
                serve(core, receiver, listeners, ready: ready, go: go)
            }
        } catch {
            state.withLock { $0.setupErrors.append(error) }
            ready.signal()
            ringEnded(i, mailboxes)
        }
    }

    /// Makes the ring's loop: with the handler alone, or, on a ring that serves other listeners,
    /// with a router to each listener's handler.
    func serve<R: ReceivePath & ~Copyable>(
        _ core: URingCore, _ receiver: consuming R, _ listeners: RingListeners, ready: DispatchSemaphore,
        go: DispatchGroup
    ) {
        let ring = core.ringIndex
        if listeners.sides.isEmpty {
            run(CompletionLoop(
                core: core, handler: makeHandler(ring), receiver: receiver, listeners: listeners,
                publish: publisher(ring)), ring: ring, ready: ready, go: go)
        } else {
            run(CompletionLoop(
                core: core, handler: routedHandler(ring, listeners), receiver: receiver, listeners: listeners,
                publish: publisher(ring)), ring: ring, ready: ready, go: go)
        }
    }

    /// How ring `ring`'s loop publishes its statistics.
    func publisher(_ ring: Int) -> (ServerStatistics, Bool) -> Void {
        { [self] snapshot, report in self.publish(thread: ring, snapshot, report: report) }
    }

    /// The handler of a ring that serves other listeners too: a router to each listener's handler.
    func routedHandler(_ ring: Int, _ listeners: RingListeners) -> ListenerRouter<Handler> {
        var sides: [(any ConnectionHandler)?] = Array(repeating: nil, count: self.listeners.count + 1)
        for side in listeners.sides { sides[Int(side.number)] = self.listeners[Int(side.number) - 1].makeHandler() }
        return ListenerRouter(main: makeHandler(ring), sides: sides)
    }

    /// Runs one ring's loop, on either driver: reports it ready, waits for the others, serves until
    /// stopped.
    func run<L: RingLoop>(_ loop: L, ring: Int, ready: DispatchSemaphore, go: DispatchGroup) {
        loop.publishFirstStatistics()
        ready.signal()
        go.wait()
        do throws(SystemError) {
            try loop.run()
        } catch {
            // A ring that ends on an error takes the server down with it, saying why: a server
            // with a dead ring would keep accepting on the others' listeners and look healthy.
            logger.error("ring \(ring) stopped on error: \(error); stopping the server")
            loop.mailboxes.ports[ring].exited.store(true, ordering: .releasing)
            stop { $0.ringFailed(ring, error) }
            loop.teardown()
        }
        ringEnded(ring, loop.mailboxes)
    }

    /// One ring thread on the epoll driver: its core and loop, ready, serve until stopped.
    @_specialize(where Handler == EchoHandler)
    func runEpollRing(
        _ i: Int, _ listeners: RingListeners, mailboxes: Mailboxes, ready: DispatchSemaphore, go: DispatchGroup
    ) {
        do throws(SystemError) {
            let mainCapacity = configuration.connections(forRing: i)
            let outboundCapacity = configuration.outboundConnections(forRing: i)
            let core = try EpollCore(
                configuration: configuration, capacity: mainCapacity + listeners.extraSessions + outboundCapacity,
                mainCapacity: mainCapacity, outboundCapacity: outboundCapacity, ringIndex: i, mailboxes: mailboxes,
                logger: logger, listeners: listeners)
            if listeners.sides.isEmpty {
                run(EpollLoop(core: core, handler: makeHandler(i), listeners: listeners, publish: publisher(i)),
                    ring: i, ready: ready, go: go)
            } else {
                run(EpollLoop(core: core, handler: routedHandler(i, listeners), listeners: listeners, publish: publisher(i)),
                    ring: i, ready: ready, go: go)
            }
        } catch {
            state.withLock { $0.setupErrors.append(error) }
            ready.signal()
            ringEnded(i, mailboxes)
        }
    }
}

/// What a ring thread needs of a driver's loop (``CompletionLoop``, ``EpollLoop``) to run it.
protocol RingLoop: AnyObject {
    /// The mailboxes between the server's rings.
    var mailboxes: Mailboxes { get }
    /// Publishes the statistics once before serving, so they exist from the start.
    func publishFirstStatistics()
    /// Serves until stopped; throws what ended the ring.
    func run() throws(SystemError)
    /// Ends what is still open after a failure.
    func teardown()
}

extension CompletionLoop: RingLoop where Receiver: ~Copyable {
    var mailboxes: Mailboxes { core.mailboxes }
    func publishFirstStatistics() { housekeeping.publishStatistics(core, buffersHeld: receiver.buffersHeld) }
}

extension EpollLoop: RingLoop {
    var mailboxes: Mailboxes { core.mailboxes }
    func publishFirstStatistics() {
        housekeeping.publishStatistics(core, buffersHeld: core.receiveCount - core.receiveAvailable)
    }
}
