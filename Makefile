# Ferry — see README.md. `make demo` and `make test` are the two set-up commands.
GO        ?= go
BIN       := bin
PKGS      := ./...
TEST_FLAGS ?= -race -timeout 75m
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/ferrydr/ferry/internal/buildinfo.Version=$(VERSION)

.PHONY: all build test check bench demo dist fuzz soak clean docs

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ferry ./cmd/ferry
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ferry-agent ./cmd/ferry-agent

test: build
	@scripts/test-deps.sh
	FERRY_BIN=$(CURDIR)/$(BIN) $(GO) test $(TEST_FLAGS) $(PKGS)
	@scripts/fuzz.sh 10s

check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) mod tidy -diff
	$(STATICCHECK) $(PKGS)
	CGO_ENABLED=0 GOOS=linux   GOARCH=amd64 $(GO) build -o /dev/null ./cmd/ferry-agent
	CGO_ENABLED=0 GOOS=linux   GOARCH=arm64 $(GO) build -o /dev/null ./cmd/ferry-agent
	CGO_ENABLED=0 GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/ferry-agent
	CGO_ENABLED=0 GOOS=windows GOARCH=amd64 $(GO) vet ./agent/... ./installer/... ./cmd/ferry-agent/...
	$(GO) test -count=1 -run 'TestImportRules' ./internal/archcheck/

fuzz:
	scripts/fuzz.sh 60s

bench: build
	scripts/bench.sh

# Long variants of suites CI runs small (root; see docs/netlab.md).
soak: build
	scripts/soak.sh

demo: build
	$(GO) run ./scripts/demo -bin $(BIN)

dist:
	scripts/dist.sh $(VERSION)

clean:
	rm -rf $(BIN) dist

# Regenerate the command reference (docs/cli.md) and man pages (man/) from
# the commands; TestCLIReferenceIsCurrent fails when they are stale.
docs:
	$(GO) test -count=1 -run 'TestCLIReferenceIsCurrent' ./cmd/ferry -update-docs
