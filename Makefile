# herald — see README.md. `make run` starts the four services locally;
# `make test` runs the test suite (unit, in-process integration, and
# end-to-end tests with the real binaries).

GO        ?= go
BIN       := $(CURDIR)/bin
TOOLS     := $(BIN)/tools
SERVICES  := gateway tracker queue plugins
BINARIES  := $(addprefix $(BIN)/herald-,$(SERVICES)) $(BIN)/herald
GOFLAGS_BUILD := -trimpath
export GOTOOLCHAIN := local

BUF_VERSION              := v1.75.0
PROTOC_GEN_GO_VERSION    := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GHZ_VERSION              := v0.120.0

.PHONY: all build run test test-short bench bench-growth bench-peers ghz lint vet fmt generate checkgenerate tools clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/herald-gateway ./services/gateway
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/herald-tracker ./services/tracker
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/herald-queue ./services/queue
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/herald-plugins ./services/plugins
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/herald ./cmd/herald

# Starts tracker, plugin host, queue and gateway on 127.0.0.1 with data in
# ./data; Ctrl-C stops all four.
run: build
	@bash scripts/run.sh

# Unit, in-process integration and end-to-end tests (the e2e tests build the
# binaries themselves).
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# Skips the end-to-end tests with real binaries.
test-short:
	$(GO) test -count=1 -short ./...

# End-to-end durable Send throughput and latency at 1 and 64 clients, beside
# the raw Pebble Sync-commit rate on the same disk.
bench: build
	$(GO) run ./e2e/cmd/herald-bench -bin $(BIN)

# How the tracker's costs grow with history (recovery time, RSS, Accept
# throughput and p99) against a store without it: builds a store of
# HERALD_GROWTH_DELIVERED (default 1,000,000) delivered messages first,
# which takes minutes. HERALD_GROWTH_DIR=dir keeps the built stores.
bench-growth:
	HERALD_GROWTH=1 $(GO) test -count=1 -run TestCostGrowth -v -timeout 60m ./services/tracker/

# Issue 7's benchmark: herald beside raw Pebble, a gRPC skeleton, RabbitMQ
# quorum queues and NATS JetStream (sync always) in interleaved rounds; it
# installs RabbitMQ (apt-get, as root) and nats-server (bin/tools) when
# missing. About 6 minutes with the defaults; pass flags with
# BENCH_PEERS_FLAGS, e.g. BENCH_PEERS_FLAGS='-rounds 2 -duration 1s'. The
# harness is its own Go module (bench/peers) so that the broker clients stay
# out of herald's go.mod.
bench-peers: build
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/herald-storebench ./services/tracker/cmd/herald-storebench
	cd bench/peers && CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(TOOLS)/herald-peers .
	$(TOOLS)/herald-peers -bin $(BIN) -tools $(TOOLS) $(BENCH_PEERS_FLAGS)

# Load-tests a running herald's Send with ghz (make run in another
# terminal), through the gateway's gRPC reflection: GHZ_ADDR, GHZ_CONCURRENCY,
# GHZ_DURATION; GHZ_FLAGS adds ghz flags.
GHZ_ADDR        ?= 127.0.0.1:7300
GHZ_CONCURRENCY ?= 64
GHZ_DURATION    ?= 10s
ghz: $(TOOLS)/ghz
	$(TOOLS)/ghz --insecure --call herald.gateway.v1.GatewayService/Send \
		-d '{"channel":"mock","recipient":"ok","conversation":"ghz-{{.RequestNumber}}","text":"{{randomString 256}}"}' \
		-c $(GHZ_CONCURRENCY) -z $(GHZ_DURATION) --duration-stop=wait $(GHZ_FLAGS) $(GHZ_ADDR)

$(TOOLS)/ghz:
	GOBIN=$(TOOLS) $(GO) install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

lint: vet tools
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	PATH=$(TOOLS):$$PATH buf lint

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

generate: tools
	PATH=$(TOOLS):$$PATH buf generate

# Fails when the committed generated code differs from what the protos give.
checkgenerate: generate
	@git diff --exit-code -- proto || (echo "generated code is stale: run make generate and commit"; exit 1)

clean:
	rm -rf $(BIN)
