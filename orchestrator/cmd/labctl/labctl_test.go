package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/paper"
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
		{"", true, "dir/file", "file"}, // cp dir/file x: (the guest's home)
	}
	for _, c := range cases {
		assert.Equal(t, c.want, copyTarget(c.dst, c.isDir, c.src), fmt.Sprintf("%+v", c))
	}
}

// cp's flags: --max-size takes a size, warnings go to stderr.
func TestCopyOptions(t *testing.T) {
	var out bytes.Buffer
	o, err := copyOptions(true, "2G", &out)
	require.NoError(t, err)
	assert.True(t, o.PreserveSpecialBits)
	assert.Equal(t, int64(2<<30), o.MaxBytes)
	o.Warn("skipped guest symlink /a -> /etc: absolute target")
	assert.Equal(t, "labctl cp: warning: skipped guest symlink /a -> /etc: absolute target\n", out.String())
	out.Reset()
	o.Warn("skipped guest symlink /a -> /\x1b[2J\n: absolute target")
	assert.Equal(t, "labctl cp: warning: skipped guest symlink /a -> /\\x1b[2J\\n: absolute target\n", out.String())

	o, err = copyOptions(false, "", &out)
	require.NoError(t, err)
	assert.False(t, o.PreserveSpecialBits)
	assert.Zero(t, o.MaxBytes)
	for _, bad := range []string{"0", "-1", "12Q", "lots"} {
		_, err := copyOptions(false, bad, &out)
		var ue usageError
		assert.ErrorAs(t, err, &ue, bad)
	}
}

func TestCopyRate(t *testing.T) {
	assert.Equal(t, "12.0 MiB (2.4 MiB/s)", rate(12<<20, 5*time.Second))
	assert.Equal(t, "0.5 MiB", rate(1<<19, 0))
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
		{"bad VM name", fmt.Errorf("up: %w", &lab.NameError{Name: "bad/name"}), nil, 2},
		{"no such VM", &lab.NoVMError{Name: "x"}, nil, 2},
		{"down of two, one unknown", quiet(errors.Join(&lab.NoVMError{Name: "x"}, &vm.InfraError{Op: "y", Err: errors.New("z")})), nil, 2},
		{"interrupted", errors.New("context canceled"), os.Interrupt, 130},
		{"terminated", &vm.InfraError{Op: "x", Err: errors.New("y")}, syscall.SIGTERM, 143},
		{"guest status wins over the signal", exitError{4}, os.Interrupt, 4},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, exitStatus(c.err, c.sig), c.name)
	}
}

func TestGuestFlagsValidate(t *testing.T) {
	ok := guestFlags{cpus: 2}
	assert.NoError(t, ok.validate(), "--mem and --swap unset")
	for _, mem := range []int{128, 768, 1024, 4096} {
		g := ok
		g.mem = mem
		assert.NoError(t, g.validate(), "--mem %d can be asked for", mem)
	}
	zeroSwap := ok
	require.NoError(t, zeroSwap.swap.Set("0"))
	assert.NoError(t, zeroSwap.validate(), "--swap 0 means no swap disk")
	cases := []struct {
		name string
		mod  func(*guestFlags)
		want string
	}{
		{"--cpus 0", func(g *guestFlags) { g.cpus = 0 }, "--cpus 0: a guest needs at least 1 vCPU"},
		{"--cpus -1", func(g *guestFlags) { g.cpus = -1 }, "--cpus -1"},
		{"--cpus 1000", func(g *guestFlags) { g.cpus = 1000 }, "at most 255"},
		{"--mem 64", func(g *guestFlags) { g.mem = 64 }, "--mem 64: the guest needs at least 128 MiB"},
		{"--mem -5", func(g *guestFlags) { g.mem = -5 }, "--mem -5"},
		{"--swap -5", func(g *guestFlags) { g.swap = optionalMiB{-5, true} }, "--swap -5: the swap disk size cannot be negative"},
	}
	for _, c := range cases {
		g := ok
		c.mod(&g)
		assert.ErrorContains(t, g.validate(), c.want, c.name)
	}
}

// TestGuestFlagsOptions: a flag that is not given leaves the size to the
// verb (0 in lab.Options); every size that is given reaches the guest,
// 1024 MiB included.
func TestGuestFlagsOptions(t *testing.T) {
	cases := []struct {
		args      []string
		mem, swap int
	}{
		{nil, 0, 0},
		{[]string{"-mem", "1024"}, 1024, 0},
		{[]string{"-mem", "768", "-swap", "512"}, 768, 512},
		{[]string{"-swap", "0"}, 0, -1},
		{[]string{"-swap", "1024"}, 0, 1024},
	}
	for _, c := range cases {
		var g guestFlags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		g.register(fs)
		require.NoError(t, fs.Parse(c.args))
		o := g.options("/repo", "x")
		assert.Equal(t, c.mem, o.MemoryMiB, "%v", c.args)
		assert.Equal(t, c.swap, o.SwapMiB, "%v", c.args)
	}
	var g guestFlags
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	assert.ErrorContains(t, fs.Parse([]string{"-swap", "lots"}), "not a whole number")
}

// TestProxyKeepsOutputAfterStdinEOF: a server that answers only once its
// input has ended (as a guest answering the last request) is heard out.
func TestProxyKeepsOutputAfterStdinEOF(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, _ := io.ReadAll(c) // until the proxy's half-close
		time.Sleep(100 * time.Millisecond)
		c.Write(append([]byte("answer to "), req...))
	}()
	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer conn.Close()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	proxy(ctx, conn.(*net.UnixConn), strings.NewReader("request"), &out)
	assert.Equal(t, "answer to request", out.String())
}

func TestParseInterspersed(t *testing.T) {
	cases := []struct {
		args     []string
		verbatim int
		want     []string
		flag     bool
	}{
		{[]string{"x", "--vanilla"}, 0, []string{"x"}, true},
		{[]string{"x", "--", "uname", "-r"}, 0, []string{"x", "uname", "-r"}, false},
		{[]string{"x", "uname", "-r"}, 1, []string{"x", "uname", "-r"}, false},
		{[]string{"x", "--", "uname", "-r"}, 1, []string{"x", "uname", "-r"}, false},
		{[]string{"--vanilla", "x", "ls", "--vanilla"}, 1, []string{"x", "ls", "--vanilla"}, true},
		{[]string{"x"}, 1, []string{"x"}, false},
	}
	for _, c := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		v := fs.Bool("vanilla", false, "")
		got, err := parseInterspersed(fs, c.args, c.verbatim, false)
		require.NoError(t, err, "%v", c.args)
		assert.Equal(t, c.want, got, "%v", c.args)
		assert.Equal(t, c.flag, *v, "%v", c.args)
	}
}

func TestSSHConfigNamesTheStateDir(t *testing.T) {
	k := &channel.Keys{}
	cfg := sshConfig("x", "/opt/my lab/labctl", "/var/lib/ldt state", k)
	assert.Contains(t, cfg, `ProxyCommand env LDTLAB_STATE='/var/lib/ldt state' '/opt/my lab/labctl' proxy x`)
}

func TestPrefixOrder(t *testing.T) {
	got, err := prefixOrder("", 4)
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2, 3, 4}, got)
	got, err = prefixOrder("6-9,5-1", 10)
	require.NoError(t, err)
	assert.Equal(t, []int{6, 7, 8, 9, 5, 4, 3, 2, 1}, got)
	got, err = prefixOrder("3, 3,1-2", 10)
	require.NoError(t, err)
	assert.Equal(t, []int{3, 1, 2}, got)
	for _, bad := range []string{"0", "11", "a", "1-11", "1,,2", "-3"} {
		_, err := prefixOrder(bad, 10)
		assert.Error(t, err, bad)
	}
}

func TestSplitRunArgs(t *testing.T) {
	for _, c := range []struct {
		args      []string
		name      string
		cmd       []string
		wantError bool
	}{
		{[]string{"x", "--", "uname", "-r"}, "x", []string{"uname", "-r"}, false},
		{[]string{"x", "uname", "-r"}, "x", []string{"uname", "-r"}, false},
		{[]string{"--", "uname", "-r"}, "", []string{"uname", "-r"}, false},
		{[]string{"--", "grep -q x /proc/kallsyms"}, "", []string{"grep -q x /proc/kallsyms"}, false},
		{[]string{"x", "--", "a", "--", "b"}, "x", []string{"a", "--", "b"}, false},
		{[]string{"x"}, "", nil, true},
		{[]string{"--"}, "", nil, true},
		{[]string{"x", "--"}, "", nil, true},
		{[]string{"x", "y", "--", "z"}, "x", []string{"y", "--", "z"}, false},
		{[]string{"--", "x", "--", "z"}, "", []string{"x", "--", "z"}, false},
	} {
		name, cmd, err := splitRunArgs(c.args)
		if c.wantError {
			assert.Error(t, err, "%q", c.args)
			continue
		}
		require.NoError(t, err, "%q", c.args)
		assert.Equal(t, c.name, name, "%q", c.args)
		assert.Equal(t, c.cmd, cmd, "%q", c.args)
	}
}

func TestParseInterspersedKeepDash(t *testing.T) {
	// run's parsing: one VM name, then verbatim; "--" kept where it separates.
	for _, c := range []struct {
		args, want []string
		patches    string
	}{
		{[]string{"--patches", "0001-0005", "--", "grep", "-q", "x"}, []string{"--", "grep", "-q", "x"}, "0001-0005"},
		{[]string{"--", "uname", "-r"}, []string{"--", "uname", "-r"}, ""},
		{[]string{"x", "--", "uname", "-r"}, []string{"x", "--", "uname", "-r"}, ""},
		{[]string{"x", "uname", "-r"}, []string{"x", "uname", "-r"}, ""},
		{[]string{"x", "echo", "--", "--patches"}, []string{"x", "echo", "--", "--patches"}, ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		patches := fs.String("patches", "", "")
		got, err := parseInterspersed(fs, c.args, 1, true)
		require.NoError(t, err, "%q", c.args)
		assert.Equal(t, c.want, got, "%q", c.args)
		assert.Equal(t, c.patches, *patches, "%q", c.args)
	}
}

func TestCopyList(t *testing.T) {
	dir := t.TempDir()
	var c copyList
	require.NoError(t, c.Set(dir+":/tmp/in/"))
	require.NoError(t, c.Set(dir+":/tmp/a:b"))
	assert.Equal(t, []hostCopy{{dir, "/tmp/in/"}, {dir, "/tmp/a:b"}}, []hostCopy(c))
	assert.Equal(t, " --copy "+dir+":/tmp/in/ --copy "+dir+":/tmp/a:b", c.args())
	for _, bad := range []string{"nocolon", ":/tmp", dir + ":", "/does/not/exist:/tmp/x"} {
		assert.Error(t, c.Set(bad), bad)
	}
}

func TestBisectPrefixes(t *testing.T) {
	series := []string{"0001-a.patch", "0002-b.patch", "0003-c.patch"}
	for s, want := range map[string]int{"": 7, "0": 0, "vanilla": 0, "2": 2, "0002": 2, "0003-c.patch": 3} {
		got, err := prefixOf(series, s, 7)
		require.NoError(t, err, s)
		assert.Equal(t, want, got, s)
	}
	for _, bad := range []string{"0004", "1-2", "x"} {
		_, err := prefixOf(series, bad, 3)
		assert.Error(t, err, bad)
	}
	base := lab.Options{Config: "perf", Patches: "stale", Without: "stale", LDTOff: true}
	o := prefixOptions(base, series, 0)
	assert.True(t, o.Vanilla)
	assert.False(t, o.LDTOff, "prefix 0 is the vanilla kernel")
	o = prefixOptions(base, series, 2)
	assert.Equal(t, "0001-0002", o.Patches)
	assert.Empty(t, o.Without)
	assert.True(t, o.LDTOff)
	assert.Equal(t, "perf", o.Config)
	o = prefixOptions(base, series, 3)
	assert.Empty(t, o.Patches, "the whole series is the default kernel (its usual cache key)")

	fs := flag.NewFlagSet("bisect", flag.ContinueOnError)
	var g guestFlags
	g.register(fs)
	fs.String("good", "", "")
	require.NoError(t, fs.Parse([]string{"--config", "sanitize", "--mem", "2048", "--good", "1"}))
	var c copyList
	require.NoError(t, c.Set(t.TempDir()+":/tmp/x"))
	again := runCommand(fs, c, []string{"sh", "-c", "grep -q ldt_ /proc/kallsyms"}, series)
	assert.Equal(t, "labctl run --patches 0001-0002 --config=sanitize --mem=2048"+c.args()+" -- sh -c 'grep -q ldt_ /proc/kallsyms'", again(2))
	assert.Equal(t, "labctl run --vanilla --config=sanitize --mem=2048"+c.args()+" -- sh -c 'grep -q ldt_ /proc/kallsyms'", again(0))
	assert.True(t, strings.HasPrefix(again(3), "labctl run --config=sanitize"), again(3))
}

// `up --gdb` on libvirt is refused before anything is built or created:
// its QEMU runs as libvirt's user, so no gdbstub there is the user's alone.
func TestUpGDBNeedsQEMUBackend(t *testing.T) {
	state := t.TempDir()
	t.Setenv("LDTLAB_STATE", state)
	err := cmdUp(context.Background(), &guestFlags{cpus: 2, backend: "libvirt"}, &shareFlags{}, true, "x")
	var u usageError
	require.ErrorAs(t, err, &u, "a usage error (exit status 2)")
	assert.Contains(t, err.Error(), "--gdb needs --backend qemu")
	assert.NoDirExists(t, filepath.Join(state, "vms"))
}

// TestPaperOutDir: only the full report goes to docs/paper without --out;
// a partial run must not overwrite it (one once did).
func TestPaperOutDir(t *testing.T) {
	state := t.TempDir()
	t.Setenv("LDTLAB_STATE", state)
	for _, c := range []struct {
		name string
		po   paper.Options
		want string
	}{
		{"default plan", paper.Options{}, "/repo/docs/paper"},
		{"full", paper.Options{Plan: "full"}, "/repo/docs/paper"},
		{"quick", paper.Options{Plan: "quick"}, filepath.Join(state, "bench-paper-quick")},
		{"reduced", paper.Options{Plan: "reduced"}, filepath.Join(state, "bench-paper-reduced")},
		{"figures", paper.Options{Figures: []string{"collect"}}, filepath.Join(state, "bench-paper-full-collect")},
		{"a/b", paper.Options{Kernels: []paper.KernelSpec{{}, {}}}, filepath.Join(state, "bench-paper-full-ab")},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := paperOutDir("/repo", c.po)
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}
