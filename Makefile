# StreamOtter: one entry point for set-up, build, run and test.
#   make run    install what is needed, build, run the gateway on the embedded Kafka
#   make test   install what is needed, build, run every test suite
SHELL := /bin/bash
PREFIX ?= /usr/local
SWIFT ?= $(shell command -v swift || echo /opt/swift/usr/bin/swift)
LISTEN ?= 127.0.0.1:8080
# Topics `make run` creates on the embedded Kafka (the quickstart uses orders).
TOPICS ?= orders:3
BUILD := build
APT_PACKAGES := librdkafka-dev libuv1-dev libssl-dev zlib1g-dev libxxhash-dev kcat pkg-config cmake curl valgrind openssl
PIP_PACKAGES := websockets confluent-kafka pytest cryptography

.PHONY: all deps build run test test-swift test-c test-e2e test-python test-node node-addon install clean

all: build

# Installs system and Python packages when missing (fresh Debian machine, run as root or
# with sudo available).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
	@python3 -c "import websockets, confluent_kafka, pytest, cryptography" 2>/dev/null || python3 -m pip install -q $(PIP_PACKAGES)
	@# Node.js with its headers, for the Node binding (preinstalled on the project's machines).
	@command -v node >/dev/null && [ -f /usr/include/node/node_api.h ] || { SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nodejs libnode-dev; }

build: deps
	$(SWIFT) build -c release --static-swift-stdlib
	@mkdir -p $(BUILD)/bin $(BUILD)/lib
	cp .build/release/streamotter-cli $(BUILD)/bin/.streamotter.tmp && mv -f $(BUILD)/bin/.streamotter.tmp $(BUILD)/bin/streamotter
	@# lld writes DWARF 5, which valgrind 3.19 cannot read: ship the library without it.
	@# Strip a copy and move it into place, so processes using the old file keep theirs.
	strip --strip-debug -o $(BUILD)/lib/.libstreamotter.so.0.tmp .build/release/libstreamotter.so
	mv -f $(BUILD)/lib/.libstreamotter.so.0.tmp $(BUILD)/lib/libstreamotter.so.0
	ln -sf libstreamotter.so.0 $(BUILD)/lib/libstreamotter.so

run: build
	exec $(BUILD)/bin/streamotter serve --listen $(LISTEN) $(foreach t,$(TOPICS),--topic $(t))

test: build test-swift test-c test-e2e test-python test-node test-fuzz

test-swift: deps
	$(SWIFT) test

# The C ABI test and C examples, built by CMake against the installed header and
# pkg-config file (staged under build/stage).
test-c: build
	cmake -S . -B $(BUILD)/cmake -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(CURDIR)/$(BUILD)/stage -DSTREAMOTTER_PREBUILT=ON >/dev/null
	cmake --build $(BUILD)/cmake -j2
	cmake --install $(BUILD)/cmake >/dev/null
	cmake -S Tests/c -B $(BUILD)/ctest -DCMAKE_PREFIX_PATH=$(CURDIR)/$(BUILD)/stage >/dev/null
	cmake --build $(BUILD)/ctest -j2
	cd $(BUILD)/ctest && ctest --output-on-failure

test-e2e: build
	STREAMOTTER_BIN=$(CURDIR)/$(BUILD)/bin/streamotter python3 -m pytest -q Tests/e2e

# libFuzzer on the handshake, frame and streamotter.v1 parsers (Tests/fuzz/run.sh):
# `make test` runs a bounded smoke (FUZZ_SMOKE_SECONDS per target), `make fuzz` the long
# run (FUZZ_SECONDS per target). Findings go to build/fuzz/findings/.
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SECONDS ?= 600
.PHONY: fuzz test-fuzz
test-fuzz:
	Tests/fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

fuzz:
	Tests/fuzz/run.sh $(FUZZ_SECONDS)

# The Node.js binding: an N-API addon that dlopen()s libstreamotter (it does not link it;
# see bindings/node/README.md), and its node --test suite.
NODE_INCLUDE ?= /usr/include/node
NODE_ADDON := bindings/node/build/streamotter.node

node-addon: $(NODE_ADDON)

$(NODE_ADDON): bindings/node/src/addon.c include/streamotter.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -std=c11 -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden -I$(NODE_INCLUDE) -Iinclude -o $@ $< -ldl -lpthread

test-node: build node-addon
	STREAMOTTER_LIBRARY=$(CURDIR)/$(BUILD)/lib/libstreamotter.so.0 node --test bindings/node/test/

# The Python binding (bindings/python, pure Python over ctypes): installed with pip, then
# its pytest suite against the library and CLI just built.
test-python: build
	python3 -m pip install -q ./bindings/python
	STREAMOTTER_LIBRARY=$(CURDIR)/$(BUILD)/lib/libstreamotter.so.0 STREAMOTTER_BIN=$(CURDIR)/$(BUILD)/bin/streamotter \
	  python3 -m pytest -q bindings/python/tests

install: build
	cmake -S . -B $(BUILD)/cmake -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) -DSTREAMOTTER_PREBUILT=ON >/dev/null
	cmake --build $(BUILD)/cmake -j2
	cmake --install $(BUILD)/cmake

clean:
	rm -rf .build $(BUILD)

.PHONY: bench

# The benchmark suite (bench/, BENCHMARKS.md): the gateway and its peers side by side on
# loopback, about 11 minutes on 2 cores; never part of `make test`. Installs the peers'
# packages when missing. BENCH_ARGS go to bench/run.py (e.g. BENCH_ARGS="--only echo --quick").
bench: build
	@missing=""; for p in libuv1-dev librdkafka-dev libwebsockets-dev pkg-config; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
	@python3 -c "import picows, socketify, uvloop, matplotlib, websockets, confluent_kafka" 2>/dev/null || \
	  python3 -m pip install -q picows socketify uvloop matplotlib websockets confluent-kafka
	@mkdir -p $(BUILD)/bench
	cc -O2 -Wall -o $(BUILD)/bench/loadgen bench/loadgen.c $$(pkg-config --cflags --libs libuv) -lpthread
	cc -O2 -Wall -o $(BUILD)/bench/tcp_echo bench/peers/tcp_echo.c $$(pkg-config --cflags --libs libuv)
	cc -O2 -Wall -o $(BUILD)/bench/rdkafka_produce bench/peers/rdkafka_produce.c $$(pkg-config --cflags --libs rdkafka)
	cc -O2 -Wall -o $(BUILD)/bench/lws_echo bench/peers/lws_echo.c $$(pkg-config --cflags --libs libwebsockets)
	python3 bench/run.py --bin-dir $(BUILD)/bench --streamotter $(BUILD)/bin/streamotter $(BENCH_ARGS)
