// Package migrate is the source side of the iterative (pre-copy)
// migration of issue 21: the paper's "performed iterative migration of a
// container hosting Redis; the container is restored correctly and
// starts serving requests normally after restore", with the tracker
// under test deciding what is copied.
//
// A migrator outside the target copies the target's private memory into
// an image: round 0 copies every page CRIU would dump (private anonymous
// pages, present or in swap, and the vDSO); each pre-copy round stops the
// target only to collect the written pages with the tracker, lets it run
// and copies those pages (and the pages of mappings that appeared since
// the last round, whole). Then a quiesce hook stops the load, the target
// is frozen (SIGSTOP), the final round collects and copies while it is
// frozen, the image is compared byte for byte with the frozen process's
// memory, and CRIU dumps the frozen process. The page contents CRIU read
// are then replaced by the migrator's copies (guest/criu.Replace: zeros
// where the migrator never copied a page), so `criu restore` runs the
// process from exactly what the tracker made the migrator copy; CRIU's
// own reading of the frozen process is kept only as the comparison.
package migrate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/checkpoint"
	"ldtlab/guest/criu"
	"ldtlab/guest/pagemap"
	"ldtlab/guest/result"
	"ldtlab/guest/tracker"
)

const pageSize = tracker.PageSize

// openTracker is tracker.Open; tests put trackers of their own here.
var openTracker = tracker.Open

// userEnd is the end of the x86-64 user address space (4-level paging).
const userEnd = 0x7ffffffff000

// Options configure the source side of a migration.
type Options struct {
	Tracker string
	Pid     int
	// Rounds is the number of pre-copy rounds after the initial copy
	// (the final, frozen round comes on top).
	Rounds   int
	Interval time.Duration
	// Dir receives CRIU's image (created; must not hold one already).
	Dir string
	// Criu is the criu binary ("criu" on PATH by default).
	Criu string
	// Quiesce is a shell command run after the last pre-copy round and
	// before the freeze (it stops the load and reads the application's
	// own digest); its stdout is kept in the result. Empty: none.
	Quiesce string
	// Timeout bounds the whole run (default 10 min); CRIU's dump gets
	// what is left of it.
	Timeout  time.Duration
	Progress io.Writer
}

// Round is result.MigrationRound: the wire type is shared with the host.
type Round = result.MigrationRound

// Result is result.Migration: the wire type is shared with the host.
type Result = result.Migration

// AreaReport is result.MigrationArea: the wire type is shared with the host.
type AreaReport = result.MigrationArea

// area is one private mapping of the target.
type area struct {
	start, end uintptr
	perms      string
	name       string
	offset     uint64 // in the mapped file
}

// file is the path of the file a private file mapping maps ("" for
// anonymous memory, special areas and deleted files).
func (a area) file() string {
	if !strings.HasPrefix(a.name, "/") || strings.HasSuffix(a.name, " (deleted)") {
		return ""
	}
	return a.name
}

func (a area) String() string { return fmt.Sprintf("%x-%x %s %s", a.start, a.end, a.perms, a.name) }

func (a area) pages() int { return int((a.end - a.start) / pageSize) }

// special areas CRIU does not dump (or that are not the process's memory).
func special(name string) bool {
	return name == "[vvar]" || name == "[vvar_vclock]" || name == "[vsyscall]"
}

// parseMaps reads /proc/PID/maps: the private mappings the migrator
// tracks and copies. Shared mappings are returned apart (CRIU dumps them
// as shared memory, which the migrator does not track).
func parseMaps(r io.Reader) (private []area, shared []string, err error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 || len(fs[1]) != 4 {
			continue
		}
		lo, hi, _ := strings.Cut(fs[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || a >= userEnd {
			continue
		}
		name := ""
		if len(fs) >= 6 {
			name = strings.Join(fs[5:], " ")
		}
		if special(name) {
			continue
		}
		off, _ := strconv.ParseUint(fs[2], 16, 64)
		ar := area{start: uintptr(a), end: uintptr(b), perms: fs[1], name: name, offset: off}
		if fs[1][3] == 's' {
			shared = append(shared, ar.String())
			continue
		}
		private = append(private, ar)
	}
	return private, shared, sc.Err()
}

func maps(pid int) ([]area, []string, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return parseMaps(f)
}

// subtract returns the parts of a that no area of old covers.
func subtract(a area, old []area) []area {
	out := []area{a}
	for _, o := range old {
		var next []area
		for _, x := range out {
			if o.end <= x.start || o.start >= x.end {
				next = append(next, x)
				continue
			}
			if x.start < o.start {
				next = append(next, area{start: x.start, end: o.start, perms: x.perms, name: x.name, offset: x.offset})
			}
			if o.end < x.end {
				next = append(next, area{start: o.end, end: x.end, perms: x.perms, name: x.name, offset: x.offset + uint64(o.end-x.start)})
			}
		}
		out = next
	}
	return out
}

// dumped tells whether CRIU stores this page of a private mapping
// (criu/mem.c should_dump_page): a private anonymous page, present or in
// swap, or any page of the vDSO (present or not: CRIU always stores it).
// Page-cache pages of a private file mapping that were never written
// are restored from the file.
func dumped(a area, e pagemap.Entry) bool {
	if a.name == "[vdso]" {
		return true
	}
	return (e.Present() && !e.File()) || e.Swapped()
}

type migrator struct {
	o      Options
	res    *Result
	ctx    context.Context
	t      tracker.Tracker
	mem    *os.File
	pm     *pagemap.File
	image  map[uintptr][]byte
	mapped []area
	cur    *Round
	copied map[uintptr]bool
	// fileBacked are the pages of private file mappings that were the
	// file's (page cache, or not populated) when the target froze.
	fileBacked map[uintptr]area
	// settled are the pages the first oracle found equal to the frozen
	// process: if CRIU reads them differently, they changed after the
	// freeze (the kernel rewrites a thread's rseq area when CRIU runs its
	// parasite code in it), which no tracker is asked to see.
	settled map[uintptr]bool
}

func (m *migrator) logf(format string, args ...any) {
	if m.o.Progress != nil {
		fmt.Fprintf(m.o.Progress, "[migrate/%s pid %d] "+format+"\n", append([]any{m.o.Tracker, m.o.Pid}, args...)...)
	}
}

// unreadable tells errors of /proc/PID/mem that mean "no page here".
func unreadable(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EFAULT) || errors.Is(err, io.EOF)
}

// copyPage copies one page of the target into the image.
func (m *migrator) copyPage(addr uintptr) error {
	if m.copied[addr] {
		return nil
	}
	b := m.image[addr]
	if b == nil {
		b = make([]byte, pageSize)
	}
	if _, err := m.mem.ReadAt(b, int64(addr)); err != nil {
		if unreadable(err) {
			delete(m.image, addr)
			m.cur.Unreadable++
			return nil
		}
		return fmt.Errorf("read /proc/%d/mem at %#x: %w", m.o.Pid, addr, err)
	}
	m.image[addr] = b
	m.copied[addr] = true
	m.cur.Copied++
	return nil
}

// copyArea copies the pages of a CRIU would dump; it returns how many.
func (m *migrator) copyArea(a area) (int, error) {
	es, err := m.pm.Read(a.start, a.pages())
	if err != nil {
		return 0, err
	}
	n := 0
	for i, e := range es {
		if !dumped(a, e) {
			continue
		}
		if err := m.copyPage(a.start + uintptr(i)*pageSize); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// swapped counts the target's private pages in swap.
func (m *migrator) swapped(as []area) (int, error) {
	n := 0
	for _, a := range as {
		es, err := m.pm.Read(a.start, a.pages())
		if err != nil {
			return 0, err
		}
		for _, e := range es {
			if e.Swapped() {
				n++
			}
		}
	}
	return n, nil
}

// collect collects the written pages of every private mapping. Soft-dirty
// clears process-wide, so it reads every area first and clears once; the
// others clear area by area.
func (m *migrator) collect(as []area) (tracker.Set, error) {
	set := tracker.Set{}
	sd := m.o.Tracker == "softdirty"
	for _, a := range as {
		got, err := m.t.Collect(a.start, a.end, !sd)
		if err != nil {
			return nil, err
		}
		set.AddRegions(got...)
	}
	if sd && len(as) > 0 {
		got, err := m.t.Collect(as[0].start, as[0].start+pageSize, true)
		if err != nil {
			return nil, err
		}
		set.AddRegions(got...)
	}
	return set, nil
}

func (m *migrator) begin(kind string) func() {
	m.res.Rounds = append(m.res.Rounds, Round{Round: len(m.res.Rounds), Kind: kind})
	m.cur = &m.res.Rounds[len(m.res.Rounds)-1]
	m.copied = map[uintptr]bool{}
	t0 := time.Now()
	return func() { m.cur.MS = ms(time.Since(t0)) }
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// initial attaches the tracker while the target is stopped, then copies
// everything CRIU would dump while it runs again: writes after the attach
// are the next round's. (Reading a vDSO page the target never touched
// faults it in: its content is the kernel's, the same everywhere.)
func (m *migrator) initial() error {
	defer m.begin("initial")()
	t0 := time.Now()
	if err := checkpoint.Stop(m.o.Pid); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	t, err := openTracker(m.o.Tracker, m.o.Pid, pageSize, userEnd)
	if err != nil {
		unix.Kill(m.o.Pid, unix.SIGCONT)
		return err
	}
	m.t = t
	as, shared, err := maps(m.o.Pid)
	if err != nil {
		unix.Kill(m.o.Pid, unix.SIGCONT)
		return err
	}
	if len(shared) > 0 {
		m.res.Notes = append(m.res.Notes, fmt.Sprintf("shared mappings are not tracked (CRIU dumps them as shared memory): %s", strings.Join(shared, "; ")))
	}
	if err := unix.Kill(m.o.Pid, unix.SIGCONT); err != nil {
		return err
	}
	m.cur.StoppedMS = ms(time.Since(t0))
	for _, a := range as {
		if _, err := m.copyArea(a); err != nil {
			return err
		}
	}
	m.cur.NewArea = m.cur.Copied
	m.mapped = as
	return nil
}

// round is one pre-copy round (the target runs while the pages are
// copied) or, with final, the round of the frozen target (left stopped).
func (m *migrator) round(final bool) ([]area, error) {
	kind := "precopy"
	if final {
		kind = "final"
	}
	defer m.begin(kind)()
	t0 := time.Now()
	if err := checkpoint.Stop(m.o.Pid); err != nil {
		return nil, fmt.Errorf("stop: %w", err)
	}
	as, _, err := maps(m.o.Pid)
	if err != nil {
		return nil, err
	}
	set, err := m.collect(as)
	if err != nil {
		return nil, fmt.Errorf("collect: %w", err)
	}
	if sw, err := m.swapped(as); err == nil {
		m.cur.Swapped = sw
	}
	if !final {
		if err := unix.Kill(m.o.Pid, unix.SIGCONT); err != nil {
			return nil, err
		}
		m.cur.StoppedMS = ms(time.Since(t0))
	}
	m.cur.Reported = set.Len()
	for _, p := range set.Sorted() {
		if err := m.copyPage(p); err != nil {
			return nil, err
		}
	}
	for _, a := range as {
		for _, na := range subtract(a, m.mapped) {
			n, err := m.copyArea(na)
			if err != nil {
				return nil, err
			}
			m.cur.NewArea += n
		}
	}
	m.mapped = as
	if final {
		m.cur.StoppedMS = ms(time.Since(t0))
	}
	return as, nil
}

// compare checks every page CRIU will dump of the frozen target against
// the image (a page the image lacks counts as zeros).
func (m *migrator) compare(as []area) error {
	buf := make([]byte, pageSize)
	zero := make([]byte, pageSize)
	for _, a := range as {
		es, err := m.pm.Read(a.start, a.pages())
		if err != nil {
			return err
		}
		here := 0
		for i, e := range es {
			addr := a.start + uintptr(i)*pageSize
			if !dumped(a, e) {
				if a.file() != "" {
					m.fileBacked[addr] = a
				}
				continue
			}
			if _, err := m.mem.ReadAt(buf, int64(addr)); err != nil {
				if unreadable(err) {
					continue
				}
				return fmt.Errorf("read /proc/%d/mem at %#x: %w", m.o.Pid, addr, err)
			}
			m.res.Compared++
			img := m.image[addr]
			if img == nil {
				img = zero
			}
			if bytes.Equal(buf, img) {
				m.settled[addr] = true
				continue
			}
			m.res.Mismatched++
			here++
			if len(m.res.Samples) < 8 {
				what := "differs from the image"
				if m.image[addr] == nil {
					what = "was never copied"
				}
				m.res.Samples = append(m.res.Samples, fmt.Sprintf("page %#x of %s %s (pagemap %#x)", addr, a, what, uint64(e)))
			}
		}
		if here > 0 {
			m.res.Areas = append(m.res.Areas, AreaReport{Area: a.String(), Mismatched: here})
		}
	}
	return nil
}

// quiesce runs the hook (the target still runs) and keeps its stdout.
func (m *migrator) quiesce() error {
	if m.o.Quiesce == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(m.ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", m.o.Quiesce)
	cmd.Env = append(os.Environ(), "PID="+strconv.Itoa(m.o.Pid))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	m.res.QuiesceOutput = strings.TrimSpace(string(out))
	if err != nil {
		return fmt.Errorf("quiesce hook: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Dump runs `criu dump` of the (stopped) pid into dir and returns the
// tail of its log when it fails. On success CRIU has killed the target.
func Dump(ctx context.Context, criuBin string, pid int, dir string) (string, error) {
	args := []string{"dump", "-t", strconv.Itoa(pid), "-D", dir, "-o", "dump.log", "-v4",
		// Connections the load left are closed on restore rather than
		// frozen with iptables (the guest has no netfilter).
		"--tcp-close"}
	return runCriu(ctx, criuBin, dir, "dump.log", args)
}

// Restore runs `criu restore -d` from dir; the restored root task's pid
// is returned. A task that was stopped at dump time is restored stopped.
func Restore(ctx context.Context, criuBin, dir string) (int, string, error) {
	pidfile := filepath.Join(dir, "restore.pid")
	os.Remove(pidfile)
	args := []string{"restore", "-D", dir, "-o", "restore.log", "-v4", "-d", "--tcp-close", "--pidfile", pidfile}
	if tail, err := runCriu(ctx, criuBin, dir, "restore.log", args); err != nil {
		return 0, tail, err
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, "", fmt.Errorf("criu restore wrote no pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, "", fmt.Errorf("criu restore pid file: %w", err)
	}
	return pid, "", nil
}

func runCriu(ctx context.Context, criuBin, dir, log string, args []string) (string, error) {
	if criuBin == "" {
		criuBin = "criu"
	}
	cmd := exec.CommandContext(ctx, criuBin, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err == nil {
		return "", nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (criu %s did not finish in time)", ctx.Err(), args[0])
	}
	b, _ := os.ReadFile(filepath.Join(dir, log))
	tail := LogErrors(string(b), 12)
	if tail == "" {
		tail = strings.TrimSpace(string(out))
	}
	return tail, fmt.Errorf("criu %s: %w: %s", args[0], err, firstLine(tail))
}

// LogErrors picks the last n error lines of a CRIU log (or its last lines
// when it has none).
func LogErrors(log string, n int) string {
	var errs []string
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	for _, l := range lines {
		if strings.Contains(l, "Error") || strings.Contains(l, "error") {
			errs = append(errs, l)
		}
	}
	if len(errs) == 0 {
		errs = lines
	}
	if len(errs) > n {
		errs = errs[len(errs)-n:]
	}
	return strings.Join(errs, "\n")
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// Run migrates o.Pid's memory into o.Dir. The target ends dumped (killed
// by CRIU) on success, and running on any failure before the dump.
func Run(o Options) *Result {
	res := &Result{Mode: "migrate-source", Tracker: o.Tracker, Pid: o.Pid, Rounds: []Round{}, Dir: o.Dir}
	start := time.Now()
	defer func() { res.Took = ms(time.Since(start)) }()
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	err := run(ctx, o, res)
	switch {
	case errors.Is(err, tracker.ErrUnsupported):
		res.Outcome, res.Reason = "skip", err.Error()
	case err != nil:
		res.Outcome, res.Reason = "fail", err.Error()
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", o.Pid)); serr != nil && res.DumpMS == 0 {
			res.Reason = fmt.Sprintf("target pid %d exited during the migration (killed? see dmesg): %v", o.Pid, err)
		}
	default:
		res.Outcome = "pass"
	}
	return res
}

func run(ctx context.Context, o Options, res *Result) error {
	if o.Rounds < 0 {
		return errors.New("rounds must not be negative")
	}
	if o.Dir == "" {
		return errors.New("no image directory")
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	if old, _ := filepath.Glob(filepath.Join(o.Dir, "*.img")); len(old) > 0 {
		return fmt.Errorf("%s already holds a CRIU image", o.Dir)
	}
	m := &migrator{o: o, res: res, ctx: ctx, image: map[uintptr][]byte{}, fileBacked: map[uintptr]area{}, settled: map[uintptr]bool{}}
	var err error
	dir := "/proc/" + strconv.Itoa(o.Pid)
	if m.mem, err = os.Open(dir + "/mem"); err != nil {
		return err
	}
	defer m.mem.Close()
	if m.pm, err = pagemap.Open(o.Pid); err != nil {
		return err
	}
	defer m.pm.Close()
	dumpedOK := false
	defer func() {
		if m.t != nil {
			m.t.Close()
		}
		if !dumpedOK {
			// Whatever failed, the target runs again (the host stops it).
			unix.Kill(o.Pid, unix.SIGCONT)
		}
	}()
	if err := m.initial(); err != nil {
		return fmt.Errorf("initial copy: %w", err)
	}
	m.logf("round 0: %d pages copied", res.Rounds[0].Copied)
	for i := 1; i <= o.Rounds; i++ {
		select {
		case <-ctx.Done():
			return fmt.Errorf("before round %d: %w", i, ctx.Err())
		case <-time.After(o.Interval):
		}
		if _, err := m.round(false); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		r := res.Rounds[i]
		m.logf("round %d: %d reported, %d copied (%d new-area), %d in swap, stopped %.1f ms", i, r.Reported, r.Copied, r.NewArea, r.Swapped, r.StoppedMS)
	}
	if err := m.quiesce(); err != nil {
		return err
	}
	freeze := time.Now()
	as, err := m.round(true)
	if err != nil {
		return fmt.Errorf("final round: %w", err)
	}
	r := res.Rounds[len(res.Rounds)-1]
	m.logf("final round (frozen): %d reported, %d copied", r.Reported, r.Copied)
	if err := m.compare(as); err != nil {
		return fmt.Errorf("compare: %w", err)
	}
	res.ImagePages = len(m.image)
	m.logf("image %d pages; %d compared with the frozen process, %d differ", res.ImagePages, res.Compared, res.Mismatched)
	// The tracker lets go before CRIU attaches (its own fd holds the
	// target's mm, not an fd of the target, but nothing should run in
	// parallel with the dump).
	m.t.Close()
	m.t = nil
	t0 := time.Now()
	tail, err := Dump(ctx, o.Criu, o.Pid, o.Dir)
	res.DumpMS = ms(time.Since(t0))
	if err != nil {
		res.DumpLog = tail
		return err
	}
	dumpedOK = true
	res.Frozen = ms(time.Since(freeze))
	st, err := criu.Replace(o.Dir, criu.Source{Page: m.source, Settled: func(addr uint64) bool { return m.settled[uintptr(addr)] }})
	res.Replace = st
	if err != nil {
		return fmt.Errorf("replacing CRIU's pages with the image: %w", err)
	}
	for _, addr := range st.DifferAt {
		where := "outside every mapping at the freeze"
		for _, a := range as {
			if uintptr(addr) >= a.start && uintptr(addr) < a.end {
				where = a.String()
			}
		}
		if len(res.DifferAreas) < 16 {
			res.DifferAreas = append(res.DifferAreas, fmt.Sprintf("%#x in %s", addr, where))
		}
	}
	if len(st.ShmemPagemaps) > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("CRIU dumped shared memory the migrator does not track: %v (left as CRIU read it)", st.ShmemPagemaps))
	}
	m.logf("CRIU dumped %d pages in %.0f ms: %d same as the image, %d differ, %d never copied, %d from their file, %d changed after the freeze", st.Pages, res.DumpMS, st.Same, st.Differ, st.Absent, res.FromFile, st.ChangedAfter)
	return nil
}

// source is the content the restored process gets for a page CRIU
// stored: the migrator's copy; for a page that was its file's when the
// target froze, the file's content (CRIU's own ptrace writes into the
// code of the frozen process, undone before it reads the pages, leave
// such pages anonymous, so CRIU stores them: a migration maps them from
// the file); nil for a page the migrator never copied.
func (m *migrator) source(addr uint64) []byte {
	if b := m.image[uintptr(addr)]; b != nil {
		return b
	}
	a, ok := m.fileBacked[uintptr(addr)]
	if !ok {
		return nil
	}
	b, err := readFilePage(a.file(), a.offset+uint64(uintptr(addr)-a.start))
	if err != nil {
		m.res.Notes = append(m.res.Notes, fmt.Sprintf("page %#x of %s: %v", addr, a, err))
		return nil
	}
	m.res.FromFile++
	if len(m.res.FromFileAreas) < 8 {
		m.res.FromFileAreas = append(m.res.FromFileAreas, fmt.Sprintf("%#x in %s", addr, a))
	}
	return b
}

// readFilePage reads the page at off of a file; past its end the mapping
// reads zeros.
func readFilePage(path string, off uint64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, pageSize)
	if _, err := f.ReadAt(b, int64(off)); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}

// State is the one-letter state of pid from /proc/PID/stat ("" when it
// does not exist).
func State(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}
