// Command ldt-selftest checks the /dev/ldt interface of issue 3 inside the
// guest: it prints "ok NAME" or "FAIL NAME: details" per check and exits 1
// if any check failed (2 on bad usage). Lines starting with "#" are
// informational (-v).
//
// It re-executes itself with the hidden -selftest-child flag for the
// processes some checks need: a target to attach to, a writer that exits
// while attached, and an unprivileged attacher for EPERM.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

const pg = 4096

var verbose bool

// sink keeps reads that exist only to fault pages in from being optimised away.
var sink byte

func info(format string, args ...any) {
	if verbose {
		fmt.Printf("# "+format+"\n", args...)
	}
}

type check struct {
	name string
	fn   func() error
}

var checks = []check{
	{"basic", checkBasic},
	{"merge", checkMerge},
	{"walk-end", checkWalkEnd},
	{"einval-unaligned", checkEinvalUnaligned},
	{"einval-inverted", checkEinvalInverted},
	{"einval-flags", checkEinvalFlags},
	{"einval-size", checkEinvalSize},
	{"einval-vec-len-0", checkEinvalVecLen0},
	{"efault-vec", checkEfaultVec},
	{"enxio-not-attached", checkEnxio},
	{"ebusy-attach-twice", checkEbusy},
	{"esrch-no-such-pid", checkEsrchNoPid},
	{"esrch-target-exited", checkEsrchExited},
	{"eperm-unprivileged", checkEperm},
	{"exit-while-attached", checkExitWhileAttached},
	{"thp-pmd", checkTHP},
	{"gup-process-vm-writev", checkProcessVMWritev},
	{"gup-proc-pid-mem", checkProcMem},
	{"naive-cpu-write", checkNaiveCPUWrite},
	{"naive-misses-gup-write", checkNaiveMissesGUP},
}

func main() {
	child := flag.String("selftest-child", "", "internal: run as a helper process")
	run := flag.String("run", "", "run only checks matching this regexp")
	list := flag.Bool("list", false, "list the checks and exit")
	flag.BoolVar(&verbose, "v", false, "print informational # lines")
	flag.Parse()
	if *child != "" {
		os.Exit(childMain(*child, flag.Args()))
	}
	if *list {
		for _, c := range checks {
			fmt.Println(c.name)
		}
		return
	}
	re, err := regexp.Compile(*run)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ldt-selftest: -run:", err)
		os.Exit(2)
	}
	failed := 0
	for _, c := range checks {
		if !re.MatchString(c.name) {
			continue
		}
		if err := runCheck(c.fn); err != nil {
			failed++
			fmt.Printf("FAIL %s: %s\n", c.name, strings.ReplaceAll(err.Error(), "\n", "; "))
		} else {
			fmt.Printf("ok %s\n", c.name)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// runCheck turns a panic into a failure so one broken check cannot hide
// the results of the others.
func runCheck(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v: %s", r, debug.Stack())
		}
	}()
	return fn()
}

// ---- helpers ----

// mapping is anonymous memory fenced by PROT_NONE guards so it stays one
// VMA of its own.
type mapping struct {
	all  []byte
	mem  []byte
	base uintptr
	n    int
}

func newMapping(pages int) (*mapping, error) {
	all, err := unix.Mmap(-1, 0, (pages+2)*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	mem := all[pg : (pages+1)*pg]
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		unix.Munmap(all)
		return nil, fmt.Errorf("mprotect: %w", err)
	}
	// 4 KiB pages keep the expected regions exact; thp-pmd tests THP.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		unix.Munmap(all)
		return nil, fmt.Errorf("madvise: %w", err)
	}
	return &mapping{all: all, mem: mem, base: uintptr(unsafe.Pointer(&mem[0])), n: pages}, nil
}

func (m *mapping) close()            { unix.Munmap(m.all) }
func (m *mapping) end() uintptr      { return m.base + uintptr(m.n)*pg }
func (m *mapping) addr(p int) uint64 { return uint64(m.base) + uint64(p)*pg }
func (m *mapping) write(pages ...int) {
	for _, p := range pages {
		m.mem[p*pg+p%pg]++
	}
}

// pageRegions builds the expected regions of base from [from,to) page pairs.
func pageRegions(base uint64, pairs ...int) []ldt.Region {
	var out []ldt.Region
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, ldt.Region{Start: base + uint64(pairs[i])*pg, End: base + uint64(pairs[i+1])*pg})
	}
	return out
}

func fmtRegions(base uint64, rs []ldt.Region) string {
	var parts []string
	for _, r := range rs {
		if r.Start >= base && (r.Start-base)%pg == 0 && (r.End-base)%pg == 0 {
			parts = append(parts, fmt.Sprintf("p%d-%d", (r.Start-base)/pg, (r.End-base)/pg))
		} else {
			parts = append(parts, fmt.Sprintf("[%#x,%#x)", r.Start, r.End))
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func sameRegions(a, b []ldt.Region) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// expect collects [start,end) with flags and compares with want exactly.
func expect(f *ldt.File, start, end uintptr, flags ldt.Flags, want []ldt.Region, what string) error {
	got, err := f.CollectAll(start, end, flags)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !sameRegions(got, want) {
		return fmt.Errorf("%s: got %s, want %s", what, fmtRegions(uint64(start), got), fmtRegions(uint64(start), want))
	}
	return nil
}

func wantErrno(err error, want unix.Errno, what string) error {
	if err == nil {
		return fmt.Errorf("%s: succeeded, want %s", what, unix.ErrnoName(want))
	}
	if !errors.Is(err, want) {
		return fmt.Errorf("%s: got %v, want %s", what, err, unix.ErrnoName(want))
	}
	return nil
}

// selfAttached opens /dev/ldt attached to this process plus a fresh
// mapping whose state is already cleared.
func selfAttached(pages int) (*ldt.File, *mapping, error) {
	f, err := ldt.Open()
	if err != nil {
		return nil, nil, err
	}
	if err := f.Attach(0); err != nil {
		f.Close()
		return nil, nil, err
	}
	m, err := newMapping(pages)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if _, err := f.CollectAll(m.base, m.end(), ldt.Clear); err != nil {
		f.Close()
		m.close()
		return nil, nil, fmt.Errorf("initial clear: %w", err)
	}
	return f, m, nil
}

// ---- checks in this process ----

func checkBasic() error {
	f, m, err := selfAttached(16)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	b := uint64(m.base)
	if err := expect(f, m.base, m.end(), 0, nil, "fresh"); err != nil {
		return err
	}
	m.write(1, 2, 7)
	want := pageRegions(b, 1, 3, 7, 8)
	for _, step := range []struct {
		flags ldt.Flags
		want  []ldt.Region
		what  string
	}{
		{0, want, "after writes"},
		{0, want, "read-only collect must not clear"},
		{ldt.Clear, want, "collect+clear"},
		{0, nil, "after clear"},
	} {
		if err := expect(f, m.base, m.end(), step.flags, step.want, step.what); err != nil {
			return err
		}
	}
	sink += m.mem[9*pg] // a read is not a write
	m.write(4)
	return expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 4, 5), "second epoch")
}

func checkMerge() error {
	f, m, err := selfAttached(16)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	for p := 0; p < 10; p++ {
		m.write(p)
	}
	m.write(12, 15)
	return expect(f, m.base, m.end(), ldt.Clear, pageRegions(uint64(m.base), 0, 10, 12, 13, 15, 16), "merge")
}

func checkWalkEnd() error {
	f, m, err := selfAttached(16)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	b := uint64(m.base)
	m.write(1, 3, 5, 7, 8)
	want := pageRegions(b, 1, 2, 3, 4, 5, 6, 7, 9)
	vec := make([]ldt.Region, 1)
	var got []ldt.Region
	cur := m.base
	for i := 0; cur < m.end(); i++ {
		if i > len(want)+1 {
			return fmt.Errorf("no end after %d calls with vec_len 1 (walk_end %#x)", i, cur)
		}
		n, we, err := f.Collect(cur, m.end(), ldt.Clear, vec)
		if err != nil {
			return fmt.Errorf("call %d: %w", i, err)
		}
		if we <= cur || we > m.end() {
			return fmt.Errorf("call %d: walk_end %#x outside (%#x,%#x]", i, we, cur, m.end())
		}
		if n == 1 {
			if uint64(we) < vec[0].End {
				return fmt.Errorf("call %d: walk_end %#x before the end of the region reported %s", i, we, fmtRegions(b, vec))
			}
			// A kernel may split a run at a resumption point; join
			// pieces as CollectAll does (merging has its own check).
			if k := len(got); k > 0 && got[k-1].End == vec[0].Start {
				got[k-1].End = vec[0].End
			} else {
				got = append(got, vec[0])
			}
		}
		if i == 0 {
			// Clear applies only to what was reported: the rest
			// must still be there.
			if err := expect(f, m.base, m.end(), 0, want[1:], "after the first vec_len 1 call with LDT_CLEAR"); err != nil {
				return err
			}
		}
		cur = we
	}
	if !sameRegions(got, want) {
		return fmt.Errorf("resumed walk returned %s, want %s", fmtRegions(b, got), fmtRegions(b, want))
	}
	return expect(f, m.base, m.end(), 0, nil, "after the resumed clear")
}

func checkEinvalUnaligned() error {
	f, m, err := selfAttached(4)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	vec := make([]ldt.Region, 4)
	_, _, err = f.Collect(m.base+1, m.end(), 0, vec)
	if err := wantErrno(err, unix.EINVAL, "unaligned start"); err != nil {
		return err
	}
	_, _, err = f.Collect(m.base, m.end()-1, 0, vec)
	return wantErrno(err, unix.EINVAL, "unaligned end")
}

func checkEinvalInverted() error {
	f, m, err := selfAttached(4)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	_, _, err = f.Collect(m.end(), m.base, 0, make([]ldt.Region, 4))
	return wantErrno(err, unix.EINVAL, "start > end")
}

func checkEinvalFlags() error {
	f, m, err := selfAttached(4)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	for _, fl := range []ldt.Flags{1 << 2, 1 << 63} {
		_, _, err = f.Collect(m.base, m.end(), fl, make([]ldt.Region, 4))
		if err := wantErrno(err, unix.EINVAL, fmt.Sprintf("flags %#x", uint64(fl))); err != nil {
			return err
		}
	}
	return nil
}

func checkEinvalSize() error {
	f, m, err := selfAttached(4)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	vec := make([]ldt.Region, 4)
	for _, size := range []uint64{0, 48, 64} {
		arg := ldt.CollectArg{Size: size, Start: uint64(m.base), End: uint64(m.end()),
			Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: uint64(len(vec))}
		_, err := f.CollectRaw(&arg)
		if err := wantErrno(err, unix.EINVAL, fmt.Sprintf("size %d", size)); err != nil {
			return err
		}
	}
	runtime.KeepAlive(vec)
	return nil
}

func checkEinvalVecLen0() error {
	f, m, err := selfAttached(4)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	m.write(0)
	_, _, err = f.Collect(m.base, m.end(), 0, nil)
	return wantErrno(err, unix.EINVAL, "vec_len 0")
}

func checkEfaultVec() error {
	f, m, err := selfAttached(4)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	// An address that was mapped a moment ago and is not any more.
	hole, err := unix.Mmap(-1, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	bad := uint64(uintptr(unsafe.Pointer(&hole[0])))
	if err := unix.Munmap(hole); err != nil {
		return err
	}
	m.write(1) // something to report, so the kernel has to write vec
	for _, vec := range []uint64{bad, 0xffff800000000000} {
		arg := ldt.CollectArg{Size: ldt.SizeofCollectArg, Start: uint64(m.base), End: uint64(m.end()), Vec: vec, VecLen: 4}
		_, err := f.CollectRaw(&arg)
		if err := wantErrno(err, unix.EFAULT, fmt.Sprintf("vec %#x", vec)); err != nil {
			return err
		}
	}
	// Nothing was cleared (no LDT_CLEAR), so the page is still reported.
	return expect(f, m.base, m.end(), 0, pageRegions(uint64(m.base), 1, 2), "after EFAULT")
}

func checkEnxio() error {
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := newMapping(4)
	if err != nil {
		return err
	}
	defer m.close()
	_, _, err = f.Collect(m.base, m.end(), 0, make([]ldt.Region, 4))
	return wantErrno(err, unix.ENXIO, "collect before attach")
}

func checkEbusy() error {
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		return fmt.Errorf("first attach: %w", err)
	}
	return wantErrno(f.Attach(0), unix.EBUSY, "second attach")
}

// ---- helper processes ----

func selfExe() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return "/proc/self/exe"
}

// target is a child process with an anonymous mapping, driven over
// stdin/stdout: "w P" writes page P, "exit" ends it.
type target struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	base uintptr
	n    int
}

func startTarget(mode string, pages, populate int) (*target, error) {
	cmd := exec.Command(selfExe(), "-selftest-child="+mode, strconv.Itoa(pages), strconv.Itoa(populate))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{cmd: cmd, in: in, out: bufio.NewReader(outp), n: pages}
	line, err := t.out.ReadString('\n')
	if err != nil {
		t.kill()
		return nil, fmt.Errorf("target did not start: %w", err)
	}
	a, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	v, perr := strconv.ParseUint(a, 0, 64)
	if !ok || perr != nil {
		t.kill()
		return nil, fmt.Errorf("target said %q", line)
	}
	t.base = uintptr(v)
	return t, nil
}

func (t *target) pid() int           { return t.cmd.Process.Pid }
func (t *target) end() uintptr       { return t.base + uintptr(t.n)*pg }
func (t *target) addr(p int) uintptr { return t.base + uintptr(p)*pg }

func (t *target) write(p int) error {
	if _, err := fmt.Fprintf(t.in, "w %d\n", p); err != nil {
		return err
	}
	line, err := t.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ok" {
		return fmt.Errorf("target write %d: %q %v", p, line, err)
	}
	return nil
}

func (t *target) kill() {
	t.cmd.Process.Kill()
	t.cmd.Wait()
}

// childMain runs the helper processes.
func childMain(mode string, args []string) int {
	atoi := func(i, def int) int {
		if i < len(args) {
			if v, err := strconv.Atoi(args[i]); err == nil {
				return v
			}
		}
		return def
	}
	switch mode {
	case "exit":
		return 0
	case "naive-unpriv":
		return naiveUnprivChild()
	case "eperm":
		// fd 3 is the parent's /dev/ldt; attach it to the parent.
		f, err := ldt.NewFile(os.NewFile(3, ldt.DevicePath))
		if err != nil {
			fmt.Println("result", err)
			return 0
		}
		fmt.Printf("uid %d\n", os.Getuid())
		err = f.Attach(atoi(0, 1))
		var errno unix.Errno
		switch {
		case err == nil:
			fmt.Println("result ok")
		case errors.As(err, &errno):
			fmt.Println("result", unix.ErrnoName(errno))
		default:
			fmt.Println("result", err)
		}
		return 0
	case "target", "writer":
		m, err := newMapping(atoi(0, 16))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
		for p := 0; p < atoi(1, 0) && p < m.n; p++ {
			m.write(p)
		}
		fmt.Printf("addr %#x\n", m.base)
		if mode == "writer" {
			// Keep writing for a while, then exit by ourselves: the
			// parent is collecting in a loop meanwhile.
			deadline := time.Now().Add(300 * time.Millisecond)
			for i := 0; time.Now().Before(deadline); i++ {
				m.write(i % m.n)
				if i%64 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			return 0
		}
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmd, arg, _ := strings.Cut(sc.Text(), " ")
			switch cmd {
			case "w":
				p, err := strconv.Atoi(arg)
				if err != nil || p < 0 || p >= m.n {
					fmt.Println("bad page")
					continue
				}
				m.write(p)
				fmt.Println("ok")
			case "exit":
				return 0
			}
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown child mode", mode)
	return 2
}

// runUnprivileged runs a helper process as uid/gid 65534 and returns its
// output; extra files become its fds 3, 4...
func runUnprivileged(mode string, extra []*os.File, args ...string) (string, error) {
	cmd := exec.Command(selfExe(), append([]string{"-selftest-child=" + mode}, args...)...)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("unprivileged helper %s: %v: %s", mode, err, out)
	}
	return string(out), nil
}

// ---- checks with other processes ----

func checkEsrchNoPid() error {
	cmd := exec.Command(selfExe(), "-selftest-child=exit")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("helper: %w", err)
	}
	pid := cmd.Process.Pid
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		return fmt.Errorf("pid %d was reused already; rerun", pid)
	}
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	return wantErrno(f.Attach(pid), unix.ESRCH, fmt.Sprintf("attach to reaped pid %d", pid))
}

// collectUntilESRCH retries for a short while: the address space is torn
// down by the exiting task, but a transient reference (e.g. a /proc
// reader) may delay the moment it is gone.
func collectUntilESRCH(f *ldt.File, start, end uintptr) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := f.CollectAll(start, end, 0)
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("collect after exit: got %v, want ESRCH", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("collect still succeeds 2s after the target exited, want ESRCH")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkEsrchExited() error {
	t, err := startTarget("target", 16, 0)
	if err != nil {
		return err
	}
	defer t.kill()
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(t.pid()); err != nil {
		return fmt.Errorf("attach to child: %w", err)
	}
	if _, err := f.CollectAll(t.base, t.end(), ldt.Clear); err != nil {
		return fmt.Errorf("initial clear: %w", err)
	}
	if err := t.write(2); err != nil {
		return err
	}
	if err := expect(f, t.base, t.end(), ldt.Clear, pageRegions(uint64(t.base), 2, 3), "child's write"); err != nil {
		return err
	}
	t.kill()
	if err := collectUntilESRCH(f, t.base, t.end()); err != nil {
		return err
	}
	return f.Close()
}

func checkEperm() error {
	if os.Getuid() != 0 {
		return fmt.Errorf("must run as root (the target of the unprivileged attach)")
	}
	// The child inherits this open file, so the device's mode does not
	// decide the outcome; the attach it tries is the one being checked.
	dev, err := os.OpenFile(ldt.DevicePath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f, err := ldt.NewFile(dev)
	if err != nil {
		dev.Close()
		return err
	}
	defer f.Close()
	s, err := runUnprivileged("eperm", []*os.File{dev}, strconv.Itoa(os.Getpid()))
	if err != nil {
		return err
	}
	if !strings.Contains(s, "uid 65534\n") {
		return fmt.Errorf("helper did not run as uid 65534: %q", s)
	}
	if !strings.Contains(s, "result EPERM\n") {
		return fmt.Errorf("unprivileged attach to root's process: %q, want EPERM", strings.TrimSpace(s))
	}
	// The refused attach must not have bound the (shared) file.
	if err := f.Attach(0); err != nil {
		return fmt.Errorf("attach after the refused one: %w", err)
	}
	return nil
}

func checkExitWhileAttached() error {
	t, err := startTarget("writer", 64, 64)
	if err != nil {
		return err
	}
	defer t.kill()
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(t.pid()); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	ok, nonEmpty := 0, 0
	deadline := time.Now().Add(10 * time.Second)
	for {
		rs, err := f.CollectAll(t.base, t.end(), ldt.Clear)
		if errors.Is(err, unix.ESRCH) {
			break
		}
		if err != nil {
			return fmt.Errorf("collect %d while the target runs and exits: %w", ok, err)
		}
		ok++
		if len(rs) > 0 {
			nonEmpty++
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no ESRCH 10s after the target should have exited")
		}
	}
	werr := t.cmd.Wait()
	info("exit-while-attached: %d collections (%d non-empty) before ESRCH, target exit: %v", ok, nonEmpty, werr)
	if nonEmpty == 0 {
		return fmt.Errorf("the writer's pages were never reported in %d collections", ok)
	}
	return f.Close()
}

const hpage = 2 << 20

// anonHugeKB returns AnonHugePages of the VMA containing addr.
func anonHugeKB(addr uintptr) (int, error) {
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		if lo, rest, ok := strings.Cut(line, "-"); ok && !strings.Contains(lo, ":") && !strings.HasSuffix(lo, " ") {
			hi, _, _ := strings.Cut(rest, " ")
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				in = uint64(addr) >= l && uint64(addr) < h
				continue
			}
		}
		if v, ok := strings.CutPrefix(line, "AnonHugePages:"); in && ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no VMA at %#x in smaps", addr)
}

func thpSetting() string {
	b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return strings.TrimSpace(string(b))
}

func checkTHP() error {
	// Reserve 2 MiB of slack, then open exactly one aligned 2 MiB VMA.
	all, err := unix.Mmap(-1, 0, 2*hpage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(all)
	start := uintptr(unsafe.Pointer(&all[0]))
	off := int((start+hpage-1)&^(hpage-1) - start)
	mem := all[off : off+hpage]
	base := uintptr(unsafe.Pointer(&mem[0]))
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return err
	}
	if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("MADV_HUGEPAGE: %w (THP enabled: %s)", err, thpSetting())
	}
	mem[0] = 1
	kb, err := anonHugeKB(base)
	if err != nil {
		return err
	}
	if kb < 2048 {
		// The fault may have fallen back to 4 KiB pages (fragmented
		// memory): populate and ask for a synchronous collapse.
		for i := 0; i < hpage; i += pg {
			mem[i] = 1
		}
		cerr := unix.Madvise(mem, unix.MADV_COLLAPSE)
		if kb, err = anonHugeKB(base); err != nil {
			return err
		}
		if kb < 2048 {
			return fmt.Errorf("no THP backing the aligned 2 MiB region (AnonHugePages %d kB, MADV_COLLAPSE: %v, THP enabled: %s)", kb, cerr, thpSetting())
		}
	}
	info("thp-pmd: region %#x is a PMD-mapped THP", base)

	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		return err
	}
	end := base + hpage
	whole := []ldt.Region{{Start: uint64(base), End: uint64(end)}}
	if err := expect(f, base, end, ldt.Clear, whole, "first collect of the written THP"); err != nil {
		return err
	}
	if err := expect(f, base, end, 0, nil, "after clear"); err != nil {
		return err
	}
	mem[3*pg+5] = 2
	if err := expect(f, base, end, 0, whole, "one byte written in subpage 3"); err != nil {
		return err
	}
	// A 1-region vec is enough for the whole PMD.
	vec := make([]ldt.Region, 1)
	n, we, err := f.Collect(base, end, ldt.Clear, vec)
	if err != nil {
		return fmt.Errorf("vec_len 1 collect: %w", err)
	}
	if n != 1 || vec[0] != whole[0] || we != end {
		return fmt.Errorf("vec_len 1 collect: n=%d vec=%s walk_end=%#x, want the whole 2 MiB and walk_end %#x", n, fmtRegions(uint64(base), vec[:n]), we, end)
	}
	if kb, err := anonHugeKB(base); err != nil || kb < 2048 {
		return fmt.Errorf("collection split the THP: AnonHugePages %d kB (%v)", kb, err)
	}
	if err := expect(f, base, end, 0, nil, "after clear"); err != nil {
		return err
	}
	mem[hpage-1] = 3
	return expect(f, base, end, ldt.Clear, whole, "write in the last subpage")
}

// gupTarget starts a target with 8 of 16 pages populated, attached and
// cleared with flags.
func gupTarget(flags ldt.Flags) (*target, *ldt.File, error) {
	t, err := startTarget("target", 16, 8)
	if err != nil {
		return nil, nil, err
	}
	f, err := ldt.Open()
	if err != nil {
		t.kill()
		return nil, nil, err
	}
	if err := f.Attach(t.pid()); err != nil {
		t.kill()
		f.Close()
		return nil, nil, fmt.Errorf("attach: %w", err)
	}
	if _, err := f.CollectAll(t.base, t.end(), flags|ldt.Clear); err != nil {
		t.kill()
		f.Close()
		return nil, nil, fmt.Errorf("initial clear: %w", err)
	}
	return t, f, nil
}

func vmWrite(pid int, addr uintptr, data []byte) error {
	n, err := unix.ProcessVMWritev(pid,
		[]unix.Iovec{{Base: &data[0], Len: uint64(len(data))}},
		[]unix.RemoteIovec{{Base: addr, Len: len(data)}}, 0)
	if err != nil {
		return fmt.Errorf("process_vm_writev: %w", err)
	}
	if n != len(data) {
		return fmt.Errorf("process_vm_writev wrote %d of %d", n, len(data))
	}
	return nil
}

func checkProcessVMWritev() error {
	t, f, err := gupTarget(0)
	if err != nil {
		return err
	}
	defer t.kill()
	defer f.Close()
	// Page 5 is populated (the kernel writes through the direct map and
	// the PTE's D bit stays clear); page 12 is not (GUP faults it in).
	if err := vmWrite(t.pid(), t.addr(5)+100, []byte("ldt")); err != nil {
		return err
	}
	if err := vmWrite(t.pid(), t.addr(12)+200, []byte("ldt")); err != nil {
		return err
	}
	return expect(f, t.base, t.end(), ldt.Clear, pageRegions(uint64(t.base), 5, 6, 12, 13), "process_vm_writev into pages 5 and 12")
}

func checkProcMem() error {
	t, f, err := gupTarget(0)
	if err != nil {
		return err
	}
	defer t.kill()
	defer f.Close()
	mem, err := os.OpenFile("/proc/"+strconv.Itoa(t.pid())+"/mem", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer mem.Close()
	if _, err := mem.WriteAt([]byte("ldt"), int64(t.addr(6)+8)); err != nil {
		return fmt.Errorf("pwrite /proc/PID/mem: %w", err)
	}
	return expect(f, t.base, t.end(), ldt.Clear, pageRegions(uint64(t.base), 6, 7), "pwrite to /proc/PID/mem page 6")
}

func checkNaiveCPUWrite() error {
	f, m, err := selfAttached(16)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	m.write(2, 3, 9)
	want := pageRegions(uint64(m.base), 2, 4, 9, 10)
	if err := expect(f, m.base, m.end(), ldt.Naive, want, "naive read"); err != nil {
		return err
	}
	if err := expect(f, m.base, m.end(), ldt.Naive|ldt.Clear, want, "naive collect+clear"); err != nil {
		return err
	}
	return expect(f, m.base, m.end(), ldt.Naive, nil, "naive after clear")
}

// checkNaiveMissesGUP makes sure the negative control really has teeth:
// after a naive clear, a write through GUP leaves the hardware D bit clear
// and naive must not see it.
func checkNaiveMissesGUP() error {
	t, f, err := gupTarget(ldt.Naive)
	if err != nil {
		return err
	}
	defer t.kill()
	defer f.Close()
	if err := vmWrite(t.pid(), t.addr(3)+1, []byte("ldt")); err != nil {
		return err
	}
	got, err := f.CollectAll(t.base, t.end(), ldt.Naive)
	if err != nil {
		return err
	}
	if len(got) != 0 {
		return fmt.Errorf("naive reported %s after a process_vm_writev into populated page 3: it must rely on the hardware D bit only", fmtRegions(uint64(t.base), got))
	}
	return nil
}
