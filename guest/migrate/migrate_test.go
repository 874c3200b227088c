package migrate

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"ldtlab/guest/criu"
	"ldtlab/guest/pagemap"
	"ldtlab/guest/tracker"
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv("MIGRATE_TEST_TARGET") == "1":
		target()
	case os.Getenv("MIGRATE_FAKE_CRIU") == "1":
		if err := fakeCriu(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "fake criu:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// target writes random pages of 4 MiB forever.
func target() {
	mem, err := unix.Mmap(-1, 0, 1024*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(err)
	}
	for i := range 1024 {
		mem[i*pageSize] = 1
	}
	fmt.Println("ready")
	for i := uint64(0); ; i++ {
		p := rand.IntN(1024)
		mem[p*pageSize+int(i%pageSize)] = byte(i)
		if i%64 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// fakeCriu stands in for `criu dump -t PID -D DIR ...`: it stores the
// pages CRIU would (the dumped rule) as CRIU's pagemap and pages images,
// then kills the target, as a dump does.
func fakeCriu(args []string) error {
	if len(args) == 0 || args[0] != "dump" {
		return fmt.Errorf("only dump is faked: %v", args)
	}
	var pid int
	var dir string
	for i := 1; i+1 < len(args); i++ {
		switch args[i] {
		case "-t":
			pid, _ = strconv.Atoi(args[i+1])
		case "-D":
			dir = args[i+1]
		}
	}
	as, _, err := maps(pid)
	if err != nil {
		return err
	}
	pm, err := pagemap.Open(pid)
	if err != nil {
		return err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return err
	}
	img := &criu.Pagemap{PagesID: 1}
	var data []byte
	buf := make([]byte, pageSize)
	for _, a := range as {
		es, err := pm.Read(a.start, a.pages())
		if err != nil {
			return err
		}
		for i, e := range es {
			addr := a.start + uintptr(i)*pageSize
			if !dumped(a, e) {
				continue
			}
			if _, err := mem.ReadAt(buf, int64(addr)); err != nil {
				continue
			}
			data = append(data, buf...)
			if n := len(img.Entries); n > 0 && img.Entries[n-1].Vaddr+uint64(img.Entries[n-1].NrPages)*pageSize == uint64(addr) {
				img.Entries[n-1].NrPages++
				continue
			}
			img.Entries = append(img.Entries, criu.Entry{Vaddr: uint64(addr), NrPages: 1, Flags: criu.PEPresent, HasFlags: true})
		}
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", pid)), criu.EncodePagemap(img), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), data, 0o600); err != nil {
		return err
	}
	return unix.Kill(pid, unix.SIGKILL)
}

func startTarget(t *testing.T) int {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MIGRATE_TEST_TARGET=1", "GOGC=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ready\n", line)
	return cmd.Process.Pid
}

// fixed is a test tracker: "all" reports every populated page of the
// range asked (correct, over-reporting), "none" never reports anything.
type fixed struct {
	all bool
	pid int
}

func (f fixed) Name() string { return map[bool]string{true: "all", false: "none"}[f.all] }
func (f fixed) Collect(start, end uintptr, clear bool) ([]tracker.Region, error) {
	if !f.all {
		return nil, nil
	}
	es, err := pagemap.Read(f.pid, start, int((end-start)/pageSize))
	if err != nil {
		return nil, err
	}
	set := tracker.Set{}
	for i, e := range es {
		if e.Present() || e.Swapped() {
			set.Add(start + uintptr(i)*pageSize)
		}
	}
	return set.Regions(), nil
}
func (f fixed) Close() error { return nil }

func useTracker(t *testing.T) {
	old := openTracker
	t.Cleanup(func() { openTracker = old })
	openTracker = func(name string, pid int, start, end uintptr) (tracker.Tracker, error) {
		switch name {
		case "all", "none":
			return fixed{all: name == "all", pid: pid}, nil
		}
		return old(name, pid, start, end)
	}
}

func migrateFake(t *testing.T, trk string) (*Result, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("reads another process's memory and pagemap frames: needs root")
	}
	useTracker(t)
	pid := startTarget(t)
	t.Setenv("MIGRATE_FAKE_CRIU", "1")
	res := Run(Options{Tracker: trk, Pid: pid, Rounds: 2, Interval: 100 * time.Millisecond, Dir: t.TempDir(), Criu: os.Args[0],
		Quiesce: "echo digest-$PID", Timeout: time.Minute})
	if res.Outcome == "skip" && strings.Contains(res.Reason, tracker.ErrUnsupported.Error()) {
		t.Skip(res.Reason)
	}
	return res, pid
}

// TestRunFakeCRIU migrates a writer with a tracker that reports every
// page (correct by construction) and a CRIU stand-in: every page the
// "dump" stores must be the migrator's copy.
func TestRunFakeCRIU(t *testing.T) {
	res, pid := migrateFake(t, "all")
	require.Equal(t, "pass", res.Outcome, "%s %s", res.Reason, res.DumpLog)
	require.Len(t, res.Rounds, 4, "initial, 2 pre-copy, final")
	assert.Equal(t, "initial", res.Rounds[0].Kind)
	assert.Equal(t, "final", res.Rounds[3].Kind)
	assert.GreaterOrEqual(t, res.Rounds[0].Copied, 1024, "the initial round copies the whole set")
	assert.Greater(t, res.Rounds[1].Reported, 0, "the writer wrote between rounds")
	assert.Equal(t, fmt.Sprintf("digest-%d", pid), res.QuiesceOutput)
	assert.Greater(t, res.Compared, 1024)
	assert.Zero(t, res.Mismatched, "%v", res.Samples)
	require.NotNil(t, res.Replace)
	assert.Zero(t, res.Replace.Differ, "%v", res.Replace.Samples)
	assert.Zero(t, res.Replace.Absent)
	assert.Equal(t, res.Replace.Same, res.Replace.Pages)
	// CRIU "killed" the target.
	time.Sleep(50 * time.Millisecond)
	assert.NotEqual(t, "R", State(pid))
}

// TestRunFakeCRIUMisses: a tracker that reports nothing leaves the image
// at round 0, and both oracles see the writes it lost.
func TestRunFakeCRIUMisses(t *testing.T) {
	res, _ := migrateFake(t, "none")
	require.Equal(t, "pass", res.Outcome, "%s %s", res.Reason, res.DumpLog)
	assert.Zero(t, res.Rounds[1].Reported)
	assert.Greater(t, res.Mismatched, 0, "the frozen process differs from the image")
	require.NotNil(t, res.Replace)
	assert.Greater(t, res.Replace.Differ, 0, "CRIU's pages differ from the image")
	assert.NotEmpty(t, res.Areas)
}

func TestRunErrors(t *testing.T) {
	res := Run(Options{Tracker: "softdirty", Pid: 1 << 30, Dir: t.TempDir(), Timeout: time.Second})
	assert.Equal(t, "fail", res.Outcome)
	assert.NotEmpty(t, res.Reason)
	res = Run(Options{Tracker: "softdirty", Pid: os.Getpid(), Timeout: time.Second})
	assert.Equal(t, "fail", res.Outcome)
	assert.Contains(t, res.Reason, "no image directory")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "core-1.img"), nil, 0o600)
	res = Run(Options{Tracker: "softdirty", Pid: os.Getpid(), Dir: dir, Timeout: time.Second})
	assert.Contains(t, res.Reason, "already holds")
}

func TestParseMaps(t *testing.T) {
	in := `55d0c0000000-55d0c0001000 r--p 00000000 00:02 12 /usr/bin/redis-server
55d0c0001000-55d0c0003000 rw-p 00001000 00:02 12 /usr/bin/redis-server
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 rw-s 00000000 00:01 7 /dev/zero (deleted)
7ffd00000000-7ffd00002000 r--p 00000000 00:00 0 [vvar]
7ffd00002000-7ffd00004000 r-xp 00000000 00:00 0 [vdso]
7ffe00000000-7ffe00021000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
`
	priv, shared, err := parseMaps(strings.NewReader(in))
	require.NoError(t, err)
	var names []string
	for _, a := range priv {
		names = append(names, a.perms+" "+a.name)
	}
	assert.Equal(t, []string{"r--p /usr/bin/redis-server", "rw-p /usr/bin/redis-server", "rw-p ", "r-xp [vdso]", "rw-p [stack]"}, names)
	assert.Equal(t, []string{"7f0000100000-7f0000200000 rw-s /dev/zero (deleted)"}, shared)
	assert.Equal(t, 2, priv[1].pages())
}

func TestDumped(t *testing.T) {
	anon := area{name: ""}
	vdso := area{name: "[vdso]"}
	assert.True(t, dumped(anon, pagemap.Present))
	assert.True(t, dumped(anon, pagemap.Swapped))
	assert.False(t, dumped(anon, pagemap.Present|pagemap.FilePage), "page cache of a private file mapping comes from the file")
	assert.False(t, dumped(anon, 0))
	assert.True(t, dumped(vdso, pagemap.Present|pagemap.FilePage))
	assert.True(t, dumped(vdso, 0), "CRIU stores every vDSO page, touched or not")
}

func TestSubtract(t *testing.T) {
	r := func(a, b uintptr) area { return area{start: a, end: b} }
	off := func(a area, o uint64) area { a.offset = o; return a }
	assert.Equal(t, []area{off(r(0x3000, 0x5000), 0x2000)}, subtract(r(0x1000, 0x5000), []area{r(0x1000, 0x3000)}), "the rest of a file mapping keeps its file offset")
	assert.Nil(t, subtract(r(0x2000, 0x3000), []area{r(0x1000, 0x5000)}))
	assert.Equal(t, []area{off(r(0x2000, 0x4000), 0x1000)}, subtract(r(0x1000, 0x5000), []area{r(0x1000, 0x2000), r(0x4000, 0x5000)}))
}

// TestSourceFromFile: a page CRIU stores that was its file's at the
// freeze gets the file's content; the migrator's copy comes first; a
// page neither has is nil (zeros: the loss shows).
func TestSourceFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lib.so")
	content := make([]byte, 3*pageSize+100)
	for i := range content {
		content[i] = byte(i / pageSize * 7)
	}
	require.NoError(t, os.WriteFile(path, content, 0o644))
	a := area{start: 0x10000, end: 0x13000, perms: "r-xp", name: path, offset: pageSize}
	m := &migrator{res: &Result{}, image: map[uintptr][]byte{0x20000: make([]byte, pageSize)}, fileBacked: map[uintptr]area{0x10000: a, 0x12000: a}}
	assert.Equal(t, content[pageSize:2*pageSize], m.source(0x10000))
	tail := m.source(0x12000) // file offset 3 pages: 100 bytes, then zeros
	assert.Equal(t, content[3*pageSize:], tail[:100])
	assert.Equal(t, make([]byte, pageSize-100), tail[100:])
	assert.NotNil(t, m.source(0x20000))
	assert.Nil(t, m.source(0x30000))
	assert.Equal(t, 2, m.res.FromFile)
	assert.Len(t, m.res.FromFileAreas, 2)
	assert.Equal(t, "", area{name: "/x (deleted)"}.file())
	assert.Equal(t, "", area{name: "[heap]"}.file())
}

func TestLogErrors(t *testing.T) {
	log := "(00.01) a\n(00.02) Error (criu/vdso.c:381): vdso: Unexpected\n(00.03) b\n(00.04) Error (criu/cr-dump.c:1): Dumping FAILED.\n"
	assert.Equal(t, "(00.02) Error (criu/vdso.c:381): vdso: Unexpected\n(00.04) Error (criu/cr-dump.c:1): Dumping FAILED.", LogErrors(log, 5))
	assert.Equal(t, "(00.04) Error (criu/cr-dump.c:1): Dumping FAILED.", LogErrors(log, 1))
	assert.Equal(t, "x\ny", LogErrors("x\ny\n", 5))
	assert.True(t, errors.Is(unix.EIO, unix.EIO))
}
