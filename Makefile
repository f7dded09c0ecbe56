# The two commands: `make run` and `make test`. Both install what is missing first.
SWIFT ?= swift
ARGS ?=

.PHONY: deps build run test clean

deps:
	@bash .ci/install-deps.sh

build: deps
	$(SWIFT) build -c release --product uring-echo

run: build
	$(SWIFT) run -c release --skip-build uring-echo $(ARGS)

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-swift-testing

clean:
	rm -rf .build
