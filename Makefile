# voldelta — build, demo and test. `make demo` and `make test` work on a fresh
# machine with Go installed; everything else is built or installed here.
GO        ?= go
BIN       := bin/voldelta
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
CACHE     ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/voldelta
export CACHE

.PHONY: all build demo test test-short vet fmt-check fuzz bench-go clean tools generate

all: build

build: $(BIN)

$(BIN): $(shell find . -name '*.go' -not -path './tools/*' -not -name '*_test.go') go.mod go.sum
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/voldelta

## demo: receiver + agent on loopback sync a generated volume, change it, sync the delta
demo: $(BIN)
	VOLDELTA=$(BIN) ./scripts/demo.sh

## tools: build the pinned MinIO server the object-store tests run against (once, cached)
## Kubernetes tests: kube-apiserver (built once, 10-25 min), kube-controller-manager (same
## k8s.io/kubernetes, built after it from the shared build cache) and controller-gen;
## etcd and mkfs.xfs come from Debian (apt-get install etcd-server xfsprogs); helm lints and renders charts/voldelta.
tools:
	GO=$(GO) ./scripts/ensure-minio.sh >/dev/null
	GO=$(GO) ./scripts/ensure-kube-apiserver.sh >/dev/null
	GO=$(GO) ./scripts/ensure-kube-controller-manager.sh >/dev/null
	GO=$(GO) ./scripts/ensure-controller-gen.sh >/dev/null
	GO=$(GO) ./scripts/ensure-csi-snapshot-metadata.sh >/dev/null
	GO=$(GO) ./scripts/ensure-helm.sh >/dev/null
	./scripts/ensure-etcd.sh >/dev/null
	./scripts/ensure-xfsprogs.sh >/dev/null

## generate: deepcopy methods of api/v1alpha1 and the CRDs in deploy/crds (controller-gen)
generate:
	GO=$(GO) ./scripts/generate.sh

## test: vet, formatting and every test with the race detector
test: vet fmt-check tools
	$(GO) test -race -timeout 60m ./...

## test-short: the tests without the race detector (faster)
test-short:
	$(GO) test -timeout 30m ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## fuzz: run every fuzzer of the module for FUZZTIME (default 1m) each: every
## func Fuzz... that `go test -list` finds in a package whose tests declare one, so
## new fuzzers need no change here. FUZZMINIMIZETIME bounds the minimization of each
## new input (Go's default, 60s, eats a whole run of a fuzzer with slow inputs). It
## runs them all, fails if any failed (or none was found) and lists what it ran.
FUZZTIME ?= 1m
FUZZMINIMIZETIME ?= 5s
fuzz:
	@set -e; ran=; failed=; \
	pkgs=$$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}={{.Dir}}{{end}}' ./...); \
	for p in $$pkgs; do \
		pkg=$${p%%=*}; dir=$${p#*=}; \
		grep -qs '^func Fuzz' "$$dir"/*_test.go || continue; \
		out=$$($(GO) test -list '^Fuzz' "$$pkg") || { printf '%s\n' "$$out"; exit 1; }; \
		for name in $$(printf '%s\n' "$$out" | grep '^Fuzz' || true); do \
			echo "== $$pkg $$name"; \
			if $(GO) test "$$pkg" -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME); \
			then ran="$$ran $$pkg.$$name"; else failed="$$failed $$pkg.$$name"; fi; \
		done; \
	done; \
	echo "fuzzed:$$ran"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; \
	if [ -z "$$ran" ]; then echo "no fuzzers found"; exit 1; fi

## bench-go: the Go micro-benchmarks (scan, transport, RTT)
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./chunk ./transport ./e2e

## bench: the study's scenarios over an emulated 100 Mbit/s, 20 ms RTT WAN, voldelta vs
## restic (+MinIO) vs rsync, at 1/70 of the study (root; installs what it needs; <= 25 min).
## bench-quick: the same at 1/1000 (<= 3 min once restic and MinIO are built). See bench/README.md.
.PHONY: bench bench-quick
bench:
	GO=$(GO) ./bench/run.sh -scale default $(BENCHFLAGS)

bench-quick:
	GO=$(GO) ./bench/run.sh -scale quick $(BENCHFLAGS)

## bench-scale: delta round time against volume size (SIZES="1 4 16" GiB by default): voldelta with a
## full scan, reflink hints (--base) and --changed, rsync and restic, the same fixed 96 MiB delta over the
## same WAN (root; XFS with reflinks on loop devices; installs what it needs; <= 20 min). See bench/README.md.
.PHONY: bench-scale
bench-scale:
	GO=$(GO) ./bench/run.sh scale $(BENCHFLAGS)

## bench-warm: a warm migration of MariaDB (2 GiB datadir) under a steady insert load over the same WAN:
## voldelta pre-copy rounds (--base reflink hints) until they converge, then the cutover; downtime from
## "database stopped" to "replica verified and MariaDB started on it", against restic (backup + full or
## in-place restore) and rsync --inplace (root; installs what it needs; <= 20 min). See bench/README.md.
.PHONY: bench-warm
bench-warm:
	GO=$(GO) ./bench/run.sh warm $(BENCHFLAGS)

## test-velero: a real Velero server (and its AWS plugin, pinned in tools/, built once: ~8 min cold)
## backs up a namespace with `--snapshot-move-data --data-mover voldelta` and restores it into another,
## against the test control plane and MinIO (internal/k8stest/velero_server_test.go, docs/velero.md)
.PHONY: test-velero
test-velero: tools
	GO=$(GO) ./scripts/ensure-velero.sh >/dev/null
	$(GO) test -race -tags veleroserver -timeout 20m ./internal/k8stest -run TestVeleroServerBackupRestore -v

## bench-velero: Velero restores (DataDownloads) of the large-file scenario at 1/70 of the study (1000 MiB
## + 14 MiB appended) from MinIO: cold into a new volume vs onto a warm replica one backup behind, through
## the receiver against the test control plane (internal/k8sreceiver/restore_bench_test.go; ~5 min)
.PHONY: bench-velero
bench-velero: tools
	$(GO) test -run '^$$' -bench BenchmarkVeleroRestore -benchtime 3x -timeout 60m ./internal/k8sreceiver

## bench-tools: build the pinned restic client the WAN benchmark (bench/) compares with (once, cached)
.PHONY: bench-tools
bench-tools:
	GO=$(GO) ./scripts/ensure-restic.sh >/dev/null

clean:
	rm -rf bin

## faults: the fault suite (root; <= 15 min): SIGKILLs of either side, cut and stalled links, a full
## disk, tampered replicas, lost journals, corrupt state, MinIO killed or damaged (docs/reliability.md).
## Knobs: FAULTS_KILLS=20, FAULTS_ONLY=regexp, FAULTS_SEED, FAULTS_JSON=path; FAULTSFLAGS for more.
.PHONY: faults
faults:
	GO=$(GO) ./scripts/ensure-minio.sh >/dev/null
	$(GO) run ./faults $(FAULTSFLAGS)
