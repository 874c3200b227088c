# ldtlab — see README.md. Every target installs what it needs first.
GO      ?= go
LABCTL  := bin/labctl
export GOFLAGS := -buildvcs=false
# A cold run builds two kernels (LDT and vanilla) on top of the tests.
TEST_TIMEOUT ?= 85m

.PHONY: all labctl setup build check stress soak fuzz fuzz-teeth coverage coverage-e2e test unit e2e bench bench-paper vet clean checkpatch series-check

all: labctl

labctl:
	@$(GO) build -o $(LABCTL) ./orchestrator/cmd/labctl

setup: labctl
	@$(LABCTL) setup --backend libvirt

build: setup
	@$(LABCTL) build

# The main job.
check: setup
	@$(LABCTL) check

# The long race hunt (make test runs an 8 s version of it).
STRESS_FOR ?= 10m
stress: setup
	@$(LABCTL) stress --for $(STRESS_FOR)

# Model-based search (make test runs 60 s of it): random sequences of
# memory operations under every tracker, findings minimized into replay
# files in a crash store (the directory is printed). QEMU only: no libvirt.
FUZZ_FOR ?= 30m
fuzz: labctl
	@$(LABCTL) setup
	@$(LABCTL) fuzz --for $(FUZZ_FOR)

# The fuzzer's teeth: on the series before issue 19's fixes (0001-0010)
# it must find the pinned-THP, shared-pin and shmem-collapse losses, the
# ring-page omission and khugepaged's retract (0023) on its own within 30
# minutes of TCG, each minimized.
FUZZ_TEETH_PATCHES ?= 0001-0010
FUZZ_TEETH_SEED ?= 1
fuzz-teeth: labctl
	@$(LABCTL) setup
	@$(LABCTL) fuzz --patches $(FUZZ_TEETH_PATCHES) --for 30m --seed $(FUZZ_TEETH_SEED) --expect pinned-thp,shared-pin,shmem-collapse,ring,khugepaged-retract

# Line coverage of the series (not part of `make test`: the coverage
# kernel is a cold build of 30+ minutes here). COVERAGE_ARGS=--quick for
# the short form (15 minutes warm); the output directory is printed.
COVERAGE_ARGS ?=
coverage: labctl
	@$(LABCTL) setup
	@$(LABCTL) coverage $(COVERAGE_ARGS)

# Its end-to-end test, building the coverage kernel if needed.
coverage-e2e: setup
	LDTLAB_COVERAGE_BUILD=1 $(GO) test -count=1 -timeout 90m -v -run 'TestCoverageQuick$$' ./tests

# The overnight job: rounds until SOAK_FOR on as many guests as the machine
# allows; `labctl soak report DIR` in the morning (DIR is printed).
SOAK_FOR ?= 8h
soak: setup
	@$(LABCTL) soak --for $(SOAK_FOR)

# The series' style: the kernel source's checkpatch.pl on every patch
# (only the missing Signed-off-by is allowed).
checkpatch: labctl
	@$(LABCTL) checkpatch

# Long (hours on 2 cores): checkpatch, then every prefix of the series
# built with CONFIG_LDT=y and =n (incrementally, one work directory each)
# and booted to its agent. Not part of `make test`.
SERIES_LDT ?= y,n
series-check: setup
	@$(LABCTL) series-check --ldt $(SERIES_LDT)

# Unit tests (no VM) and the end-to-end suite (real guests).
test: setup vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

unit: labctl
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

e2e: setup
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./tests

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

bench: setup
	@$(LABCTL) bench

# The LDT paper's four figures, measured here (~25 min under TCG): docs/paper/.
bench-paper: setup
	@$(LABCTL) bench paper

clean:
	rm -rf bin
