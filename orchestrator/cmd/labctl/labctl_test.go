package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"

	"ldtlab/orchestrator/vm"
)

// `labctl cp` into a directory puts the copy inside it, in both
// directions and both README forms (`cp file x:/tmp/`, `cp x:/tmp/file .`).
func TestCopyTarget(t *testing.T) {
	cases := []struct {
		dst   string
		isDir bool
		src   string
		want  string
	}{
		{"/tmp/", false, "file", "/tmp/file"},         // cp file x:/tmp/
		{"/tmp", true, "dir/file", "/tmp/file"},       // cp dir/file x:/tmp
		{".", true, "/tmp/file", "file"},              // cp x:/tmp/file .
		{"out/", false, "/tmp/file", "out/file"},      // cp x:/tmp/file out/
		{"/tmp/new", false, "file", "/tmp/new"},       // a new name
		{"/tmp", true, "/tmp/tree/", "/tmp/tree"},     // a directory source
		{"/root/x", false, "/tmp/payload", "/root/x"}, // explicit file
		{"/tmp/", false, "/", "/tmp/"},                // root source keeps dst
		{"here", true, "/var/log/../log/syslog", "here/syslog"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, copyTarget(c.dst, c.isDir, c.src), fmt.Sprintf("%+v", c))
	}
}

func TestExitStatus(t *testing.T) {
	cases := []struct {
		name string
		err  error
		sig  os.Signal
		want int
	}{
		{"guest command status", exitError{9}, nil, 9},
		{"guest failure", &vm.CrashError{Type: "panic", Title: "Kernel panic"}, nil, 1},
		{"guest died", fmt.Errorf("x: %w", &vm.DiedError{Reason: "QEMU was killed"}), nil, 1},
		{"lab failure", fmt.Errorf("up: %w", &vm.InfraError{Op: "starting QEMU", Err: errors.New("cannot allocate memory")}), nil, 3},
		{"usage", usageError{errors.New("need SRC and DST")}, nil, 2},
		{"interrupted", errors.New("context canceled"), os.Interrupt, 130},
		{"terminated", &vm.InfraError{Op: "x", Err: errors.New("y")}, syscall.SIGTERM, 143},
		{"guest status wins over the signal", exitError{4}, os.Interrupt, 4},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, exitStatus(c.err, c.sig), c.name)
	}
}

func TestGuestFlagsValidate(t *testing.T) {
	ok := guestFlags{mem: 1024, cpus: 2, swap: 512}
	assert.NoError(t, ok.validate())
	zeroSwap := ok
	zeroSwap.swap = 0
	assert.NoError(t, zeroSwap.validate(), "--swap 0 means no swap disk")
	cases := []struct {
		name string
		mod  func(*guestFlags)
		want string
	}{
		{"--cpus 0", func(g *guestFlags) { g.cpus = 0 }, "--cpus 0: a guest needs at least 1 vCPU"},
		{"--cpus -1", func(g *guestFlags) { g.cpus = -1 }, "--cpus -1"},
		{"--cpus 1000", func(g *guestFlags) { g.cpus = 1000 }, "at most 255"},
		{"--mem 0", func(g *guestFlags) { g.mem = 0 }, "--mem 0: the guest needs at least 128 MiB"},
		{"--mem -5", func(g *guestFlags) { g.mem = -5 }, "--mem -5"},
		{"--swap -5", func(g *guestFlags) { g.swap = -5 }, "--swap -5: the swap disk size cannot be negative"},
	}
	for _, c := range cases {
		g := ok
		c.mod(&g)
		assert.ErrorContains(t, g.validate(), c.want, c.name)
	}
}
