// Package checkpoint is the incremental checkpoint oracle of issue 4: a
// checkpointer outside the target process, as a pre-copy live migration
// does it. Each round it stops the target (SIGSTOP), collects the written
// pages with the tracker under test, copies them from /proc/PID/mem into
// an image and lets the target run again. In the final round it compares
// the image with all of the target's writable private memory: every page
// that differs is a write the tracker missed.
package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/pagemap"
	"ldtlab/guest/result"
	"ldtlab/guest/tracker"
)

const pageSize = tracker.PageSize

// userEnd is the end of the x86-64 user address space (4-level paging):
// the tracker is opened on all of it, so VMAs created later are covered.
const userEnd = 0x7ffffffff000

// Options configure a checkpoint run.
type Options struct {
	Tracker  string
	Pid      int
	Rounds   int
	Interval time.Duration
	Progress io.Writer
	// Strict is for a target that never discards memory (the synthetic
	// writer): a page that reads as zeros, or cannot be read, where the
	// image has data is a miss, not an excuse.
	Strict bool
}

// Result is result.Checkpoint: the wire type is shared with the host.
type Result = result.Checkpoint

// region is one writable private mapping of the target.
type region struct {
	start, end uintptr
	file       bool // file-backed (its unwritten pages are file content)
	name       string
}

func (r region) key() string { return fmt.Sprintf("%x-%x %s", r.start, r.end, r.name) }

// maps lists the target's writable mappings (private and shared).
func maps(pid int) ([]region, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []region
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 || len(fs[1]) < 4 || fs[1][1] != 'w' {
			continue
		}
		lo, hi, _ := strings.Cut(fs[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		name := ""
		if len(fs) >= 6 {
			name = fs[5]
		}
		if a >= userEnd || name == "[vsyscall]" {
			continue
		}
		out = append(out, region{start: uintptr(a), end: uintptr(b), file: fs[4] != "0", name: name})
	}
	return out, sc.Err()
}

// Stop sends SIGSTOP and waits (up to 30 s) until every thread of pid is
// stopped. The migrator (guest/migrate) freezes its target the same way.
func Stop(pid int) error {
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			return unix.ESRCH
		}
		all := true
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			s := string(b)
			i := strings.LastIndexByte(s, ')')
			if i < 0 || i+2 >= len(s) {
				continue
			}
			if st := s[i+2]; st != 'T' && st != 't' && st != 'Z' && st != 'X' {
				all = false
			}
		}
		if all {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("target %d did not stop within 30 s", pid)
}

type checkpointer struct {
	o     Options
	res   *Result
	t     tracker.Tracker
	mem   *os.File
	pm    *pagemap.File
	image map[uintptr][]byte
	// mapped is the address ranges mapped at the last round: only pages
	// outside them are new and copied whole. (Keyed by VMA bounds, a VMA
	// that grows, merges or splits would be copied again, repairing
	// earlier misses.)
	mapped []region
}

func (c *checkpointer) logf(format string, args ...any) {
	if c.o.Progress != nil {
		fmt.Fprintf(c.o.Progress, "[checkpoint/%s pid %d] "+format+"\n", append([]any{c.o.Tracker, c.o.Pid}, args...)...)
	}
}

// copyPage reads one page of the target into the image.
func (c *checkpointer) copyPage(addr uintptr) error {
	b := c.image[addr]
	if b == nil {
		b = make([]byte, pageSize)
	}
	if _, err := c.mem.ReadAt(b, int64(addr)); err != nil {
		// A page of a region unmapped meanwhile, or one the kernel cannot
		// read (a file mapping past the end of its file reads as EOF):
		// nothing to copy, and compare skips it the same way.
		if unreadable(err) {
			delete(c.image, addr)
			c.res.Unreadable++
			return nil
		}
		return fmt.Errorf("read /proc/%d/mem at %#x: %w", c.o.Pid, addr, err)
	}
	c.image[addr] = b
	return nil
}

// copyRegion copies the populated (present or swapped) pages of r, and
// for file-backed regions every page (unwritten pages are file content).
func (c *checkpointer) copyRegion(r region) (int, error) {
	fl, err := c.pm.Read(r.start, int((r.end-r.start)/pageSize))
	if err != nil {
		return 0, err
	}
	n := 0
	for i, f := range fl {
		if r.file || (f.Present() || f.Swapped()) {
			if err := c.copyPage(r.start + uintptr(i)*pageSize); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// collect collects the written pages of every writable region. Soft-dirty
// clears process-wide, so it reads every region first and clears once;
// the others clear region by region.
func (c *checkpointer) collect(rs []region) (tracker.Set, error) {
	set := tracker.Set{}
	sd := c.o.Tracker == "softdirty"
	for _, r := range rs {
		got, err := c.t.Collect(r.start, r.end, !sd)
		if err != nil {
			return nil, err
		}
		set.AddRegions(got...)
	}
	if sd && len(rs) > 0 {
		got, err := c.t.Collect(rs[0].start, rs[0].start+pageSize, true)
		if err != nil {
			return nil, err
		}
		set.AddRegions(got...)
	}
	return set, nil
}

// round is one stop-collect-copy-continue cycle. New writable regions are
// copied whole (a pre-copy transfers a new mapping's content once).
func (c *checkpointer) round(first bool) (rs []region, err error) {
	t0 := time.Now()
	if err := Stop(c.o.Pid); err != nil {
		return nil, fmt.Errorf("stop: %w", err)
	}
	defer func() {
		c.res.StoppedMS = append(c.res.StoppedMS, time.Since(t0).Milliseconds())
	}()
	rs, err = maps(c.o.Pid)
	if err != nil {
		return nil, err
	}
	if first {
		t, err := tracker.Open(c.o.Tracker, c.o.Pid, pageSize, userEnd)
		if err != nil {
			return nil, err
		}
		c.t = t
	}
	set, err := c.collect(rs)
	if err != nil {
		return nil, fmt.Errorf("collect: %w", err)
	}
	if !first {
		c.res.Reported = append(c.res.Reported, set.Len())
	}
	for _, p := range set.Sorted() {
		if err := c.copyPage(p); err != nil {
			return nil, err
		}
	}
	for _, r := range rs {
		for _, nr := range subtract(r, c.mapped) {
			n, err := c.copyRegion(nr)
			if err != nil {
				return nil, err
			}
			if first {
				c.res.FirstCopyPgs += n
			} else {
				c.res.NewRegionPgs += n
			}
		}
	}
	c.mapped = rs
	return rs, nil
}

// subtract returns the parts of r that no region of old covers.
func subtract(r region, old []region) []region {
	out := []region{r}
	for _, o := range old {
		var next []region
		for _, x := range out {
			if o.end <= x.start || o.start >= x.end {
				next = append(next, x)
				continue
			}
			if x.start < o.start {
				next = append(next, region{start: x.start, end: o.start, file: x.file, name: x.name})
			}
			if o.end < x.end {
				next = append(next, region{start: o.end, end: x.end, file: x.file, name: x.name})
			}
		}
		out = next
	}
	return out
}

// unreadable tells errors of /proc/PID/mem that mean "no page here".
func unreadable(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EFAULT) || errors.Is(err, io.EOF)
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// compare checks every page of the writable regions against the image.
func (c *checkpointer) compare(rs []region) error {
	buf := make([]byte, pageSize)
	zero := make([]byte, pageSize)
	c.res.RegionsAtEnd = len(rs)
	for _, r := range rs {
		fl, err := c.pm.Read(r.start, int((r.end-r.start)/pageSize))
		if err != nil {
			return err
		}
		missedHere := 0
		for i, f := range fl {
			addr := r.start + uintptr(i)*pageSize
			img := c.image[addr]
			if img == nil {
				img = zero
			}
			if f.Swapped() {
				c.res.SwappedAtEnd++
			}
			if !r.file && !f.Present() && !f.Swapped() {
				// Never populated (or discarded): reads as zeros.
				c.res.Compared++
				if !isZero(img) {
					c.res.Zeroed++
					if c.o.Strict {
						c.res.Missed++
						missedHere++
					}
				}
				continue
			}
			if _, err := c.mem.ReadAt(buf, int64(addr)); err != nil {
				if unreadable(err) {
					c.res.Unreadable++
					if c.o.Strict {
						c.res.Missed++
						missedHere++
					}
					continue
				}
				return fmt.Errorf("read /proc/%d/mem at %#x: %w", c.o.Pid, addr, err)
			}
			c.res.Compared++
			if string(buf) == string(img) {
				continue
			}
			// Zeros where the image has data: the target discarded the
			// page (a missed write of zeros would hide here; accepted).
			if isZero(buf) && !c.o.Strict {
				c.res.Zeroed++
				continue
			}
			c.res.Missed++
			missedHere++
			if len(c.res.Samples) < 8 {
				c.res.Samples = append(c.res.Samples, fmt.Sprintf("page %#x in %s differs from the image (pagemap %#x)", addr, r.key(), f))
			}
		}
		if missedHere > 0 {
			c.res.MissedRegions = append(c.res.MissedRegions, fmt.Sprintf("%s: %d pages", r.key(), missedHere))
		}
	}
	return nil
}

// Run checkpoints o.Pid for o.Rounds rounds o.Interval apart, then
// compares. The target is left running.
func Run(o Options) *Result {
	res := &Result{Mode: "checkpoint", Tracker: o.Tracker, Pid: o.Pid, Rounds: o.Rounds, Reported: []int{}, StoppedMS: []int64{}}
	start := time.Now()
	defer func() { res.DurationMS = time.Since(start).Milliseconds() }()
	err := run(o, res)
	var errno unix.Errno
	switch {
	case errors.Is(err, tracker.ErrUnsupported):
		res.Outcome, res.Reason, res.AsExpected = "skip", err.Error(), true
		return res
	case err != nil:
		if errors.As(err, &errno) && errno == unix.ESRCH {
			res.TargetExited = true
		}
		res.Outcome, res.Reason = "fail", err.Error()
		// Reads of a dead process's memory fail with EOF: say what died.
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", o.Pid)); serr != nil {
			res.TargetExited = true
			res.Reason = fmt.Sprintf("target pid %d exited during the checkpoint (killed? see dmesg): %v", o.Pid, err)
		}
		return res
	}
	reported := 0
	for _, n := range res.Reported {
		reported += n
	}
	// A run that compared, reported or swapped nothing proves nothing.
	var why []string
	if res.Compared == 0 {
		why = append(why, "no page compared")
	}
	if reported == 0 && o.Tracker != "naive" {
		why = append(why, "the tracker reported no page in any round")
	}
	if res.SwappedAtEnd == 0 {
		why = append(why, "no page of the target was in swap at the end")
	}
	if len(why) > 0 {
		res.Outcome, res.Reason, res.AsExpected = "skip", "precondition not met: "+strings.Join(why, "; "), false
		return res
	}
	res.Outcome = "pass"
	if res.Missed > 0 {
		res.Outcome = "fail"
		res.Reason = fmt.Sprintf("%d pages differ from the image: writes the tracker missed", res.Missed)
	}
	res.AsExpected = res.Outcome == "pass"
	if o.Tracker == "naive" {
		// The negative control must miss writes of a swapping target.
		res.AsExpected = res.Missed > 0
		res.Reason = fmt.Sprintf("naive (negative control) missed %d pages", res.Missed)
	}
	return res
}

func run(o Options, res *Result) error {
	if o.Rounds < 1 {
		return fmt.Errorf("rounds must be at least 1")
	}
	c := &checkpointer{o: o, res: res, image: map[uintptr][]byte{}}
	var err error
	dir := "/proc/" + strconv.Itoa(o.Pid)
	if c.mem, err = os.Open(dir + "/mem"); err != nil {
		return err
	}
	defer c.mem.Close()
	if c.pm, err = pagemap.Open(o.Pid); err != nil {
		return err
	}
	defer c.pm.Close()
	defer func() {
		_ = unix.Kill(o.Pid, unix.SIGCONT)
		if c.t != nil {
			c.t.Close()
		}
	}()
	if _, err := c.round(true); err != nil {
		return err
	}
	c.logf("attached: %d pages copied", res.FirstCopyPgs)
	if err := unix.Kill(o.Pid, unix.SIGCONT); err != nil {
		return err
	}
	for i := 1; i <= o.Rounds; i++ {
		time.Sleep(o.Interval)
		rs, err := c.round(false)
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		c.logf("round %d: %d pages reported, image %d pages", i, res.Reported[len(res.Reported)-1], len(c.image))
		if i == o.Rounds {
			// Still stopped: the image must now equal the target.
			if err := c.compare(rs); err != nil {
				return err
			}
			break
		}
		if err := unix.Kill(o.Pid, unix.SIGCONT); err != nil {
			return err
		}
	}
	res.ImagePages = len(c.image)
	c.logf("compared %d pages: %d missed, %d zeroed", res.Compared, res.Missed, res.Zeroed)
	return nil
}
