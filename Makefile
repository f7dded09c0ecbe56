# The two commands: `make run` and `make test`. Both install what is missing first.
SWIFT ?= swift
ARGS ?=

.PHONY: deps build run test bench bench-build soak docs examples examples-epoll clean

deps:
	@bash .ci/install-deps.sh

build: deps
	$(SWIFT) build -c release --product uring-echo

run: build
	$(SWIFT) run -c release --skip-build uring-echo $(ARGS)

# The suite twice: on io_uring, then on epoll where io_uring is refused (without-io-uring applies
# the seccomp filter Docker's default profile has; URING_ECHO_TEST_DRIVER=epoll asks every test
# server for the epoll driver; io_uring's own tests skip there, saying why).
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-swift-testing
	URING_ECHO_TEST_DRIVER=epoll ./.build/debug/without-io-uring $(SWIFT) test --skip-build --disable-swift-testing

bench-build: deps
	$(SWIFT) build -c release --product uring-echo
	$(SWIFT) build -c release --package-path Benchmarks --product uring-echo-bench
	$(SWIFT) build -c release --package-path Benchmarks --product nio-echo
	$(SWIFT) build -c release --package-path Benchmarks --product nio-async-echo
	$(SWIFT) build -c release --package-path Examples --product async-echo
	$(SWIFT) build -c release --package-path Examples --product tcp-proxy
	$(SWIFT) build -c release --package-path Benchmarks --product epoll-echo
	$(SWIFT) build -c release --package-path Benchmarks --product uring-c-echo

# Every server under every workload, pinned and interleaved; BENCH_QUICK=1 for a short run.
bench: bench-build
	@command -v python3 >/dev/null || (apt-get update -qq && apt-get install -y -qq python3)
	@command -v taskset >/dev/null || (apt-get update -qq && apt-get install -y -qq util-linux)
	python3 Benchmarks/scripts/bench.py
	if [ "$${BENCH_PROXY:-1}" != 0 ]; then python3 Benchmarks/scripts/proxy_bench.py; fi
	if [ "$${BENCH_ATTACK:-1}" != 0 ]; then python3 Benchmarks/scripts/attack_bench.py; fi

# SOAK_MINUTES (default 10) of mixed load against each mode, a line per minute and a verdict.
soak: bench-build
	@command -v python3 >/dev/null || (apt-get update -qq && apt-get install -y -qq python3)
	python3 Benchmarks/scripts/soak.py

# docs/architecture.md names only code that exists; then DocC for the four library modules,
# warnings are errors. Output: .build/docs/<Module>.
docs: deps
	python3 docs/check-architecture.py
	mkdir -p .build/docs
	for target in SystemIO URing SocketPool EchoServer EchoServerMetrics; do \
		$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation \
			--target $$target --warnings-as-errors --output-path .build/docs/$$target || exit 1; \
	done

# Build the examples, start each, talk to it over loopback, stop it.
examples: deps
	@command -v python3 >/dev/null || (apt-get update -qq && apt-get install -y -qq python3)
	bash Examples/run-examples.sh

# The examples again where io_uring is refused: each serves on epoll by itself.
examples-epoll: deps
	@command -v python3 >/dev/null || (apt-get update -qq && apt-get install -y -qq python3)
	$(SWIFT) build --product without-io-uring
	EXAMPLES_LAUNCHER=$(CURDIR)/.build/debug/without-io-uring bash Examples/run-examples.sh

clean:
	rm -rf .build
