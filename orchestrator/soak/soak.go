// Package soak is the overnight job (`labctl soak`): rounds of randomized
// catalogue scenarios, stress runs, checkpoint oracles and mm selftests on
// N reused guests until a deadline, every finished cell appended to a
// synced journal, every kernel report, hang or lost page filed by title
// under DIR/crashes (syzkaller's manager is the model), lab failures kept
// apart, and a report for the morning. It is a policy over the step
// executor (exec.go): the executor judges, the soak decides what happens
// to the guest.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"ldtlab/guest/result"
	"ldtlab/images/kernel"
	"ldtlab/internal/secfs"
	"ldtlab/internal/shquote"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/coverage"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/paper"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/vm"
)

// Options are fixed when a soak starts and kept in its journal.
type Options struct {
	For       time.Duration `json:"for"`
	VMs       int           `json:"vms"`
	Config    string        `json:"config"`            // kernel config: debug | sanitize | perf
	Patches   string        `json:"patches,omitempty"` // --patches: part of the LDT series (kernel.Select)
	Without   string        `json:"without,omitempty"` // --without
	LDTOff    bool          `json:"ldt_off,omitempty"` // --ldt=n
	Accel     string        `json:"accel,omitempty"`
	MemoryMiB int           `json:"memory_mib"`
	Seed      uint64        `json:"seed"` // base seed; round n runs RoundSeed(Seed, n)
	Light     bool          `json:"light,omitempty"`
	Inject    []Injection   `json:"inject,omitempty"`
	// Trackers restricts the scenario cells (default: ldt and the
	// references); mutants are judged as check judges them.
	Trackers []string `json:"trackers,omitempty"`
	// Rounds stops after this many rounds (0: until the deadline).
	Rounds int `json:"rounds,omitempty"`
	// Only runs just this round number (a replay: --round N).
	Only int `json:"only,omitempty"`
	// Hosts fans the guests out over libvirt hosts (URIs): worker w runs
	// on Hosts[w % len(Hosts)], VMsPerHost guests each.
	Hosts      []string `json:"hosts,omitempty"`
	VMsPerHost int      `json:"vms_per_host,omitempty"`
}

// DefaultVMs is what the machine allows: one guest per core (TCG keeps a
// host CPU busy per guest) and twice the guest's memory on the host per
// guest, from the QEMU backend's capacity; at most 8.
func DefaultVMs(memMiB int) int {
	b, err := vm.Open("qemu", vm.BackendConfig{})
	if err != nil {
		return 1
	}
	defer b.Close()
	c, err := b.Capacity()
	if err != nil {
		return 1
	}
	return min(c.VMs(1, memMiB*2), 8)
}

// CellRecord is one finished step in the journal.
type CellRecord struct {
	Round      int      `json:"round"`
	Worker     int      `json:"worker"`
	Step       Step     `json:"step"`
	Verdict    string   `json:"verdict"`
	Failed     bool     `json:"failed"`
	Pages      int64    `json:"pages"`
	Missed     int      `json:"missed,omitempty"`
	Corrupted  int      `json:"corrupted,omitempty"`
	Reason     string   `json:"reason,omitempty"`
	Error      string   `json:"error,omitempty"`
	Fault      string   `json:"fault,omitempty"` // crash | hang | boot | died | lab
	Reports    []Seen   `json:"reports,omitempty"`
	Crashes    []string `json:"crashes,omitempty"` // titles filed for this cell
	Known      []string `json:"known,omitempty"`   // known kernel bugs outside LDT filed for it
	Reproduced string   `json:"reproduced,omitempty"`
	Took       float64  `json:"took_s"`
	Repro      string   `json:"repro,omitempty"`
	// Detail: what a stress or fuzz step did (agitators, operations, per
	// tracker).
	Detail *Detail `json:"detail,omitempty"`
	// VMStat: the guest's vmstat counters that moved during the step
	// (nil when the guest could not be sampled after it).
	VMStat VMStat `json:"vmstat,omitempty"`
	// Dump: where the console and the sysrq-t/w dump of a step that
	// timed out or hung are kept (relative to the soak's directory).
	Dump string `json:"dump,omitempty"`
}

// RoundRecord closes a round: its cells are in the journal before it.
type RoundRecord struct {
	Round    int       `json:"round"`
	Seed     uint64    `json:"seed"`
	Worker   int       `json:"worker"`
	Started  time.Time `json:"started"`
	Cells    int       `json:"cells"`
	Failures int       `json:"failures"`
	Pages    int64     `json:"pages"`
	Boots    int       `json:"boots"` // fresh guests booted during it
	Cut      bool      `json:"cut,omitempty"`
	// VMStat sums its cells' vmstat deltas; VMStatCells says how many
	// cells had one (a cell whose guest died has none).
	VMStat      VMStat `json:"vmstat,omitempty"`
	VMStatCells int    `json:"vmstat_cells,omitempty"`
}

// failedVerdict: the unexpected outcomes, as check counts them.
func failedVerdict(v string) bool { return result.Verdict(v).Failed() }

// Soak is one running soak.
type Soak struct {
	Dir   string
	O     Options
	Guest lab.Options // base guest options (repo, config...)
	Out   io.Writer   // progress and events

	j         *Journal
	store     *Store
	session   int
	start     time.Time
	deadline  time.Time
	prev      time.Duration // active time of earlier sessions
	cat       []Scenario
	kernel    string
	kernelKey string
	accel     string
	logFile   *os.File

	// exec runs a step (execStep; a fake in unit tests).
	exec func(ctx context.Context, g *guest, s Step, cat []Scenario) (Outcome, error)
	// sample reads the guest's vmstat (sampleVMStat; nil in unit tests:
	// no deltas).
	sample func(ctx context.Context, g *guest) (VMStat, error)
	// dump takes a stuck guest's sysrq-t/w dump (sysrqDump; a fake in
	// unit tests).
	dump func(ctx context.Context, g *guest) (string, error)
	// snap takes a coverage snapshot of a guest into dir (snapshotGuest
	// with --config coverage, a fake in unit tests, nil otherwise).
	snap func(ctx context.Context, g *guest, dir string) (*coverage.Report, error)

	mu       sync.Mutex
	done     map[int]bool
	inflight map[int]bool
	stats    Stats
	progress *progress
	cov      *coverageUnion // executed series lines so far (under mu)
	env      *Env           // this session's provenance (nil in unit tests)
	host     string
}

// Run starts a new soak in dir, or resumes the one there.
func Run(ctx context.Context, dir string, o Options, gopts lab.Options, resume bool, out io.Writer) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	s := &Soak{Dir: dir, O: o, Guest: gopts, Out: out, exec: execStep, sample: sampleVMStat, dump: sysrqDump, done: map[int]bool{}, inflight: map[int]bool{}}
	var old []Record
	if resume {
		if old, err = Replay(dir); err != nil {
			return err
		}
	} else if _, err := os.Stat(filepath.Join(dir, JournalName)); err == nil {
		return fmt.Errorf("%s already holds a soak: continue it with --resume %s, or choose another --out", dir, dir)
	}
	if s.j, err = OpenJournal(dir); err != nil {
		return err
	}
	defer s.j.Close()
	if s.store, err = OpenStore(dir); err != nil {
		return err
	}
	s.logFile, err = secfs.OpenIn(dir, "soak.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer s.logFile.Close()
	if resume {
		if err := s.restore(old); err != nil {
			return err
		}
		fmt.Fprintf(out, "soak %s: resuming with the options its journal recorded: %s\n", dir, s.O.describe())
		s.killLeftovers()
	}
	if s.O.Config == "coverage" {
		s.snap = snapshotGuest
		if s.cov, err = loadCoverageUnion(dir); err != nil {
			// Coverage is not worth the soak: start the union afresh.
			fmt.Fprintf(out, "soak %s: %v: the coverage union starts again from zero\n", dir, err)
		} else if resume && len(s.cov.Lines) == 0 && journalHasCoverage(old) {
			fmt.Fprintf(out, "soak %s: %s is missing: the coverage union starts again from zero\n", dir, CoverageUnionName)
		}
	}
	s.start = time.Now()
	s.deadline = s.start.Add(s.O.For - s.prev)
	if s.O.Only > 0 {
		s.deadline = s.start.Add(24 * time.Hour)
	}
	// The QEMUs of this soak are named after its directory (the leak check
	// of the tests and --resume find them by it).
	if s.O.MemoryMiB == 0 {
		s.O.MemoryMiB = 768 // preset.Pressure' size: room for pressure
	}
	if len(s.O.Hosts) > 0 {
		s.O.VMs = len(s.O.Hosts) * max(1, s.O.VMsPerHost)
	}
	if s.O.VMs <= 0 {
		s.O.VMs = DefaultVMs(s.O.MemoryMiB)
	}
	if s.O.Only > 0 {
		s.O.VMs = 1 // a replay is one round on one fresh guest
	}
	s.Guest.Config, s.Guest.MemoryMiB = s.O.Config, s.O.MemoryMiB
	s.Guest.Patches, s.Guest.Without, s.Guest.LDTOff = s.O.Patches, s.O.Without, s.O.LDTOff
	if s.O.Accel != "" {
		s.Guest.Accel = s.O.Accel
	}
	preset.Pressure(&s.Guest)
	s.Guest.Log = s.logFile
	// Guests live for hours: their console logs rotate.
	s.Guest.ConsoleMaxMiB = 64
	if !s.O.Light {
		files, err := preset.RedisFiles()
		if err != nil {
			return fmt.Errorf("the soak's checkpoint and migration oracles need redis and criu: %w", err)
		}
		s.Guest.Extra = append(s.Guest.Extra, files...)
	}

	// The first guest also tells the catalogue and the kernel.
	first, err := s.boot(ctx, 1)
	if err != nil {
		return fmt.Errorf("booting the first guest: %w", err)
	}
	if s.cat == nil {
		if s.cat, err = catalogue(ctx, first); err != nil {
			first.m.Close()
			return err
		}
	}
	s.kernel, s.kernelKey, s.accel = first.m.Kernel.Meta.KernelRelease, first.m.Kernel.Meta.Key, string(first.m.Accel.Kind)
	if s.snap != nil {
		if _, err := first.m.Kernel.LoadGcovManifest(); err != nil {
			// A kernel without counters (--vanilla): every snapshot would
			// fail; say so once instead of a lab failure every 5 minutes.
			fmt.Fprintf(out, "soak %s: no coverage curve: %v\n", dir, err)
			s.snap = nil
		}
	}
	host, _ := os.Hostname()
	backend := s.Guest.Backend
	if len(s.O.Hosts) > 0 {
		backend = "libvirt" // QEMU runs on those hosts: its version is theirs
	}
	s.env = collectEnv(s.Guest.Repo, first.m, backend)
	s.host = host
	if err := s.j.Append(Record{Type: "start", Session: s.session, Start: &Start{
		Options: s.O, Kernel: s.kernel, KernelKey: s.kernelKey, Accel: s.accel, Catalogue: s.cat, Resumed: resume, Host: host,
		Env: s.env,
	}}); err != nil {
		first.m.Close()
		return err
	}
	s.progress = newProgress(s, out)
	s.progress.event("soak %s: session %d, %d guest(s) of %d MiB, %s kernel %s, %s; until %s (seed %d)",
		dir, s.session, s.O.VMs, s.O.MemoryMiB, s.O.Config, s.kernel, s.accel, s.deadline.Format("01-02 15:04:05"), s.O.Seed)
	stop := s.progress.run()

	var wg sync.WaitGroup
	for w := 1; w <= s.O.VMs; w++ {
		var g *guest
		if w == 1 {
			g = first
		}
		wg.Add(1)
		go func(w int, g *guest) {
			defer wg.Done()
			s.worker(ctx, w, g)
		}(w, g)
	}
	wg.Wait()
	stop()
	reason := "deadline"
	switch {
	case ctx.Err() != nil:
		reason = "interrupted"
	case s.O.Only > 0 || s.O.Rounds > 0:
		reason = "rounds done"
	}
	s.j.Append(Record{Type: "end", Session: s.session, End: &End{Reason: reason, Load: paper.LoadAvg()}})
	st := s.snapshot()
	fmt.Fprintf(out, "soak %s: %s after %s: %s\n", dir, reason, (s.prev + time.Since(s.start)).Round(time.Second), st.Line())
	fmt.Fprintf(out, "report: labctl soak report %s\n", dir)
	return nil
}

// restore reads what the journal says: options, catalogue, elapsed time,
// finished rounds and the counters.
func (s *Soak) restore(old []Record) error {
	var first *Start
	sessStart := map[int]time.Time{}
	sessLast := map[int]time.Time{}
	for _, r := range old {
		s.session = max(s.session, r.Session)
		if r.Type == "start" && r.Start != nil {
			if first == nil {
				first = r.Start
			}
			sessStart[r.Session] = r.At
		}
		sessLast[r.Session] = r.At
	}
	if first == nil {
		return fmt.Errorf("%s: the journal has no start record: nothing to resume", s.Dir)
	}
	for sess, t := range sessStart {
		s.prev += sessLast[sess].Sub(t)
	}
	s.session++
	// The journal says which libvirt hosts the guests ran on; a resume
	// connects to them only when the command line names them again.
	if !sameHosts(s.O.Hosts, first.Options.Hosts) {
		if len(first.Options.Hosts) == 0 {
			return fmt.Errorf("%s ran its guests on this machine, not on --hosts %s: resume it without --hosts", s.Dir, strings.Join(s.O.Hosts, ","))
		}
		return fmt.Errorf("%s ran its guests on the libvirt hosts %s: a resume connects to them only when they are given again: add --hosts %s (hosts given: %q)",
			s.Dir, strings.Join(first.Options.Hosts, ", "), strings.Join(first.Options.Hosts, ","), s.O.Hosts)
	}
	forOverride := s.O.For
	s.O = first.Options
	if forOverride > 0 {
		// --for on resume gives the whole soak a new length.
		s.O.For = forOverride
	}
	s.cat = first.Catalogue
	sum := summarizeDir(s.Dir, old)
	for r := range sum.roundsDone {
		s.done[r] = true
	}
	s.stats = sum.Stats
	return nil
}

func sameHosts(a, b []string) bool {
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

// describe is the options in one line, for a resume to show what it
// took from the journal.
func (o Options) describe() string {
	parts := []string{fmt.Sprintf("config %s", o.Config), fmt.Sprintf("seed %d", o.Seed), fmt.Sprintf("for %s", o.For), fmt.Sprintf("%d MiB guests", o.MemoryMiB)}
	if len(o.Hosts) > 0 {
		parts = append(parts, fmt.Sprintf("hosts %s (%d guest(s) each)", strings.Join(o.Hosts, ","), max(1, o.VMsPerHost)))
	} else if o.VMs > 0 {
		parts = append(parts, fmt.Sprintf("%d guest(s)", o.VMs))
	}
	if o.Accel != "" {
		parts = append(parts, "accel "+o.Accel)
	}
	if o.Light {
		parts = append(parts, "light")
	}
	if len(o.Trackers) > 0 {
		parts = append(parts, "trackers "+strings.Join(o.Trackers, ","))
	}
	if o.Rounds > 0 {
		parts = append(parts, fmt.Sprintf("%d rounds", o.Rounds))
	}
	if len(o.Inject) > 0 {
		var in []string
		for _, i := range o.Inject {
			in = append(in, fmt.Sprintf("%s@%d", i.Word, i.Round))
		}
		parts = append(parts, "inject "+strings.Join(in, ","))
	}
	return termsafe.Line(strings.Join(parts, ", "))
}

// killLeftovers stops QEMUs a killed session of this soak left (they die
// with their orchestrator through the parent-death signal; this is the
// belt to those braces).
func (s *Soak) killLeftovers() {
	prefix := "ldtlab-" + s.vmPrefix()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), "qemu-system") || !strings.Contains(string(b), prefix) {
			continue
		}
		var pid int
		fmt.Sscan(e.Name(), &pid)
		if pid > 0 {
			s.logf("killing QEMU pid %d left by an earlier session", pid)
			lab.Stop([]lab.Proc{{PID: pid, Role: "qemu"}}, 2*time.Second)
		}
	}
}

// vmPrefix names this soak's guests: "soak-<hash of DIR>-".
func (s *Soak) vmPrefix() string { return "soak-" + TitleHash(s.Dir)[:8] + "-" }

func (s *Soak) logf(format string, args ...any) {
	fmt.Fprintf(s.logFile, "%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

func catalogue(ctx context.Context, g *guest) ([]Scenario, error) {
	cat, err := cell.List(ctx, g.m)
	if err != nil {
		return nil, fmt.Errorf("listing the catalogue: %w", err)
	}
	if len(cat) == 0 {
		return nil, errors.New("ldt-check -list gave an empty catalogue")
	}
	sort.Slice(cat, func(i, j int) bool { return cat[i].Name < cat[j].Name })
	return cat, nil
}

func (s *Soak) boot(ctx context.Context, w int) (*guest, error) {
	o := s.Guest
	o.Name = fmt.Sprintf("%sw%d", s.vmPrefix(), w)
	where := ""
	if len(s.O.Hosts) > 0 {
		o.Backend, o.Connect = "libvirt", s.O.Hosts[(w-1+len(s.O.Hosts))%len(s.O.Hosts)]
		where = " on " + o.Connect
	}
	m, err := lab.Boot(ctx, o)
	if err != nil {
		return nil, err
	}
	s.logf("worker %d: booted %s%s in %s", w, m.Name, where, m.BootTime.Round(time.Millisecond))
	// Its counters start at zero now: the first snapshot is due after
	// coverageEvery.
	return &guest{m: m, covAt: time.Now()}, nil
}

// next hands out the lowest round not done and not running: rounds a
// killed session left unfinished are redone first.
func (s *Soak) next() (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.O.Only > 0 {
		if s.done[s.O.Only] || s.inflight[s.O.Only] {
			return 0, false
		}
		s.inflight[s.O.Only] = true
		return s.O.Only, true
	}
	for n := 1; ; n++ {
		if s.O.Rounds > 0 && n > s.O.Rounds {
			return 0, false
		}
		if !s.done[n] && !s.inflight[n] {
			s.inflight[n] = true
			return n, true
		}
	}
}

func (s *Soak) over(ctx context.Context) bool {
	return ctx.Err() != nil || time.Now().After(s.deadline)
}

// worker runs rounds on its guest, replacing the guest after a fault.
func (s *Soak) worker(ctx context.Context, w int, g *guest) {
	last := 0
	defer func() {
		if g != nil {
			// What the guest ran since its last snapshot would be lost
			// with it (an interrupt skips this: ctx is done).
			s.coverageSnapshot(ctx, w, last, g, true)
			g.close()
		}
	}()
	backoff := 5 * time.Second
	for !s.over(ctx) {
		n, ok := s.next()
		if !ok {
			return
		}
		last = n
		finished := s.round(ctx, w, n, &g, &backoff)
		s.mu.Lock()
		delete(s.inflight, n)
		if finished {
			s.done[n] = true
		}
		s.mu.Unlock()
	}
}

// round runs round n; false if it was abandoned (interrupted: a resume
// redoes it).
func (s *Soak) round(ctx context.Context, w, n int, gp **guest, backoff *time.Duration) bool {
	seed := RoundSeed(s.O.Seed, n)
	steps := withInjections(PlanRound(seed, s.cat, Mix{Light: s.O.Light, GuestMiB: s.O.MemoryMiB, Trackers: s.O.Trackers}), n, s.O.Inject)
	rr := RoundRecord{Round: n, Seed: seed, Worker: w, Started: time.Now().UTC()}
	s.logf("worker %d: round %d seed %d: %d steps", w, n, seed, len(steps))
	for i := 0; i < len(steps); i++ {
		if ctx.Err() != nil {
			return false
		}
		if time.Now().After(s.deadline) && s.O.Only == 0 {
			rr.Cut = true
			break
		}
		if *gp == nil {
			g, err := s.boot(ctx, w)
			if err != nil {
				if ctx.Err() != nil {
					return false
				}
				s.bootFailed(n, w, err)
				// Boot again after a pause; the step is retried.
				select {
				case <-ctx.Done():
					return false
				case <-time.After(*backoff):
				}
				*backoff = min(2**backoff, 2*time.Minute)
				i--
				continue
			}
			*backoff = 5 * time.Second
			*gp = g
			rr.Boots++
		}
		c := s.step(ctx, w, n, seed, steps[i], gp)
		if ctx.Err() != nil {
			return false
		}
		rr.Cells++
		rr.Pages += c.Pages
		if c.VMStat != nil {
			if rr.VMStat == nil {
				rr.VMStat = VMStat{}
			}
			rr.VMStat.Add(c.VMStat)
			rr.VMStatCells++
		}
		if c.Failed {
			rr.Failures++
		}
		s.j.Append(Record{Type: "cell", Session: s.session, Cell: &c})
		s.mu.Lock()
		s.stats.addCell(c)
		s.mu.Unlock()
		if g := *gp; g != nil {
			g.covDirty = true
			s.coverageSnapshot(ctx, w, n, g, false)
		}
	}
	if err := s.j.Append(Record{Type: "round", Session: s.session, Round: &rr}); err != nil {
		s.progress.event("journal: %v", err)
	}
	s.mu.Lock()
	s.stats.Rounds++
	s.mu.Unlock()
	return true
}

// step runs one step, files what it found, and replaces the guest after
// a kernel report or fault.
func (s *Soak) step(ctx context.Context, w, n int, seed uint64, st Step, gp **guest) CellRecord {
	g := *gp
	s.sampleBefore(ctx, g)
	t := time.Now()
	out, err := s.exec(ctx, g, st, s.cat)
	c := CellRecord{Round: n, Worker: w, Step: st, Verdict: out.Verdict, Pages: out.Pages, Missed: out.Missed,
		Corrupted: out.Corrupted, Reason: out.Reason, Reports: out.Reports, Took: time.Since(t).Seconds(), Repro: s.repro(n, st),
		Detail: out.Detail}
	if ctx.Err() != nil {
		return c
	}
	replace := len(out.Reports) > 0
	// Kernel reports seen during the step: each filed under its title.
	seen := map[string]bool{}
	for _, r := range out.Reports {
		title := r.String()
		if seen[title] {
			continue
		}
		seen[title] = true
		kind := "kernel"
		if r.Known != "" {
			kind = "known"
		}
		s.file(Occurrence{Title: title, Type: r.Type, Kind: kind, Known: r.Known, Round: n, Worker: w, Seed: seed, Step: st, Span: r.Text, Log: g.log()}, &c)
	}
	// A fuzz step's findings: each under its own title, with its replay.
	for _, f := range out.Findings {
		o := Occurrence{Title: f.Title, Type: f.Type, Kind: f.Kind, Round: n, Worker: w, Seed: seed, Step: st, Span: f.Span, Log: g.log()}
		if f.Replay != nil && f.Fuzz != nil {
			o.Files = map[string][]byte{"replay.json": f.Replay}
			o.Repro = fmt.Sprintf("labctl fuzz --replay %s --trackers %s%s", shquote.Word(filepath.Join(s.store.TitleDir(f.Title), "replay.json")), shquote.Word(f.Fuzz.Tracker), s.configFlag())
		}
		s.file(o, &c)
	}
	var dump []byte
	if err != nil && stuck(err) {
		// Before the guest is killed: what every task was doing.
		dump = s.keepDump(ctx, n, w, st, g, &c)
	}
	if err != nil {
		replace = true
		c.Error = err.Error()
		if !failedVerdict(c.Verdict) {
			c.Verdict = string(result.VFail)
		}
		var ce *vm.CrashError
		var he *vm.HangError
		var be *vm.BootError
		switch {
		case errors.As(err, &ce):
			c.Fault = "crash"
			title := vm.Headline(ce.Type, ce.Title)
			if ce.Type != "" {
				title = ce.Type + ": " + ce.Title
			}
			if !seen[title] {
				s.file(Occurrence{Title: title, Type: ce.Type, Kind: "kernel", Round: n, Worker: w, Seed: seed, Step: st, Span: ce.Text, Log: g.log()}, &c)
			}
		case errors.As(err, &he):
			c.Fault = "hang"
			s.file(Occurrence{Title: "hang: no progress during " + hangWhat(st), Type: "hang", Kind: "hang", Round: n, Worker: w, Seed: seed, Step: st, Span: err.Error(), Log: g.log(), Dump: dump}, &c)
		case errors.As(err, &be):
			c.Fault = "boot"
			s.file(Occurrence{Title: "boot: " + firstLine(be.Reason), Type: "boot", Kind: "boot", Round: n, Worker: w, Seed: seed, Step: st, Span: err.Error(), Log: g.log()}, &c)
		case vm.IsGuestFault(err):
			// DiedError: QEMU went away without a kernel report.
			c.Fault, c.Verdict = "died", string(result.VLab)
			s.labFailure(n, w, &st, "step", err, g.log())
		default:
			var ie *vm.InfraError
			if errors.As(err, &ie) {
				c.Fault, c.Verdict = "lab", string(result.VLab)
				s.labFailure(n, w, &st, "step", err, g.log())
			} else {
				// The step's own error (a command that timed out but the
				// guest answers): a failed cell, the guest is kept.
				c.Verdict, replace = string(result.VError), false
			}
		}
	}
	c.Failed = failedVerdict(c.Verdict)
	for _, r := range out.Reports {
		c.Failed = c.Failed || r.Known == ""
	}
	if st.Kind == "inject" {
		// The reports it provokes are filed; the step did what it was asked.
		c.Verdict, c.Failed = string(result.VInjected), false
	}
	if err == nil || !replace {
		// The guest still answers: the sample after this step is the one
		// before the next.
		c.VMStat = s.sampleAfter(ctx, g)
	}
	if replace {
		if err == nil {
			// It still answers (a report, a KNOWN-GAP): keep what it ran
			// before its counters go with it.
			g.covDirty = true
			s.coverageSnapshot(ctx, w, n, g, true)
		}
		s.logf("worker %d: round %d: replacing the guest after %s", w, n, firstLine(c.Verdict+" "+c.Error+" "+strings.Join(c.Crashes, "; ")))
		g.close()
		*gp = nil
	}
	// A correctness failure is re-run once from its seed.
	if c.Verdict == string(result.VFail) && err == nil && len(out.Reports) == 0 && (out.Missed > 0 || out.Corrupted > 0) && st.Kind != "inject" {
		c.Reproduced = s.rerun(ctx, w, st, gp)
		what := "lost pages"
		if out.Corrupted > 0 {
			what = "corrupted pages"
		}
		title := fmt.Sprintf("%s: %s", what, st.Name())
		if st.Tracker != "" {
			title += " × " + st.Tracker
		}
		s.file(Occurrence{Title: title, Type: strings.ReplaceAll(what, " ", "-"), Kind: "correctness", Round: n, Worker: w, Seed: seed, Step: st,
			Span: fmt.Sprintf("%s\nmissed %d, corrupted %d: %s\nre-run from its seed: reproduced=%s\n", st, out.Missed, out.Corrupted, out.Reason, c.Reproduced),
			Log:  (*gpOr(gp, g)).log(), Reproduced: c.Reproduced}, &c)
	}
	return c
}

func gpOr(gp **guest, g *guest) **guest {
	if *gp != nil {
		return gp
	}
	return &g
}

// rerun runs a failed step again with the same seed: "yes" if it fails
// the same way, "no" if it passes.
func (s *Soak) rerun(ctx context.Context, w int, st Step, gp **guest) string {
	if *gp == nil {
		g, err := s.boot(ctx, w)
		if err != nil {
			return "not-rerun"
		}
		*gp = g
	}
	out, err := s.exec(ctx, *gp, st, s.cat)
	(*gp).vmstat = nil // the re-run moved the counters: sample again before the next step
	if err != nil || len(out.Reports) > 0 {
		if err != nil && vm.IsGuestFault(err) {
			(*gp).close()
			*gp = nil
		}
		return "not-rerun"
	}
	if out.Verdict == string(result.VFail) && (out.Missed > 0 || out.Corrupted > 0) {
		return "yes"
	}
	return "no"
}

// sampleBefore makes sure g has a vmstat sample from before the step (a
// fresh guest has none yet).
func (s *Soak) sampleBefore(ctx context.Context, g *guest) {
	if s.sample == nil || g == nil || g.vmstat != nil {
		return
	}
	v, err := s.sample(ctx, g)
	if err != nil {
		s.logf("vmstat before a step: %v", err)
		return
	}
	g.vmstat = v
}

// sampleAfter samples g after a step and returns the step's delta (nil
// without both samples).
func (s *Soak) sampleAfter(ctx context.Context, g *guest) VMStat {
	if s.sample == nil || g == nil {
		return nil
	}
	before := g.vmstat
	g.vmstat = nil
	after, err := s.sample(ctx, g)
	if err != nil {
		s.logf("vmstat after a step: %v", err)
		return nil
	}
	g.vmstat = after
	if before == nil {
		return nil
	}
	d, err := Delta(before, after)
	if err != nil {
		s.logf("%v", err)
		return nil
	}
	return d
}

func hangWhat(st Step) string {
	switch st.Kind {
	case "scenario":
		return "scenario " + st.Scenario
	case "stress":
		return "stress"
	case "checkpoint":
		return "checkpoint " + st.Target
	case "fuzz":
		return "fuzz"
	case "migrate":
		return "migrate redis"
	}
	return st.Name()
}

// file records one occurrence in the crash store and the cell.
func (s *Soak) file(o Occurrence, c *CellRecord) {
	o.At = time.Now().UTC()
	o.Kernel, o.KernelKey = s.kernel, s.kernelKey
	if o.Repro == "" {
		o.Repro = c.Repro
	}
	cr, err := s.store.Record(o)
	if err != nil {
		s.progress.event("crash store: %v", err)
		return
	}
	if o.Kind == "known" {
		c.Known = append(c.Known, o.Title)
	} else {
		c.Crashes = append(c.Crashes, o.Title)
		s.mu.Lock()
		s.stats.CrashTotal++
		if cr.Count == 1 {
			s.stats.CrashUnique++
		}
		s.mu.Unlock()
	}
	known := ""
	if o.Kind == "known" {
		known = " [known kernel bug outside LDT, not counted]"
	}
	s.progress.event("round %d worker %d: %s (seen %d×)%s → %s", o.Round, o.Worker, o.Title, cr.Count, known, cr.Dir)
}

func (s *Soak) labFailure(n, w int, st *Step, phase string, err error, log []byte) {
	lf := LabFailure{Round: n, Worker: w, Step: st, Phase: phase, Error: err.Error()}
	if rerr := recordLabFailure(s.Dir, time.Now(), lf, log); rerr != nil {
		s.progress.event("recording a lab failure: %v", rerr)
	}
	s.j.Append(Record{Type: "lab-failure", Session: s.session, LabFailure: &lf})
	s.mu.Lock()
	s.stats.LabFailures++
	s.mu.Unlock()
	s.progress.event("round %d worker %d: lab failure (not a kernel bug): %s", n, w, firstLine(err.Error()))
}

// bootFailed files a guest that did not boot: the kernel's fault (a boot
// crash or hang) or the lab's.
func (s *Soak) bootFailed(n, w int, err error) {
	var ce *vm.CrashError
	var he *vm.HangError
	var be *vm.BootError
	var c CellRecord
	c.Repro = s.repro(n, Step{})
	switch {
	case errors.As(err, &ce):
		s.file(Occurrence{Title: ce.Type + ": " + ce.Title, Type: ce.Type, Kind: "kernel", Round: n, Worker: w, Seed: RoundSeed(s.O.Seed, n), Span: ce.Text + "\n" + ce.Tail}, &c)
	case errors.As(err, &he):
		s.file(Occurrence{Title: "hang: no progress during boot", Type: "hang", Kind: "hang", Round: n, Worker: w, Seed: RoundSeed(s.O.Seed, n), Span: err.Error()}, &c)
	case errors.As(err, &be):
		s.file(Occurrence{Title: "boot: " + firstLine(be.Reason), Type: "boot", Kind: "boot", Round: n, Worker: w, Seed: RoundSeed(s.O.Seed, n), Span: err.Error()}, &c)
	default:
		s.labFailure(n, w, nil, "boot", err, nil)
	}
}

// configFlag selects the soak's kernel config in a reproduction command.
func (s *Soak) configFlag() string {
	return kernel.Options{Repo: s.Guest.Repo, Config: s.O.Config, Vanilla: s.Guest.Vanilla,
		Patches: s.O.Patches, Without: s.O.Without, LDTOff: s.O.LDTOff}.Flags()
}

// repro is the one-line command that replays what failed: the cell alone
// where labctl has a command for it, else the whole round from its seed.
// Names from the guest's catalogue are quoted for the shell; a round's
// replay goes to a directory inside this soak's own (never a shared one
// such as /tmp, where another user could have prepared it).
func (s *Soak) repro(n int, st Step) string {
	q := shquote.Word
	cfg := s.configFlag()
	switch st.Kind {
	case "fuzz":
		return fmt.Sprintf("labctl fuzz --seed %d --for %s --mem %d%s", st.Seed, st.Duration, s.O.MemoryMiB, cfg)
	case "scenario":
		sp, _ := spec(st, []Scenario{{Name: st.Scenario}})
		return sp.Repro() + " --no-compare --no-checkpoint --no-migrate --stress 0" + cfg
	case "migrate":
		cmd := preset.MigrateShort.Repro(st.Tracker) + cfg
		if s.O.MemoryMiB > 0 {
			cmd += fmt.Sprintf(" --mem %d", s.O.MemoryMiB)
		}
		return cmd
	case "stress":
		if st.THP && st.Tracker != "ldt" {
			break // labctl stress runs THP for ldt only: replay the round
		}
		sp, _ := spec(st, nil)
		return sp.Repro() + fmt.Sprintf(" --mem %d", s.O.MemoryMiB) + cfg
	}
	// Everything that shapes the round's plan goes along: its mix, its
	// trackers, the guest size, and the injections it fired.
	var extra strings.Builder
	if s.O.Light {
		extra.WriteString(" --light")
	}
	if len(s.O.Trackers) > 0 {
		extra.WriteString(" --tracker " + q(strings.Join(s.O.Trackers, ",")))
	}
	if s.O.MemoryMiB > 0 {
		fmt.Fprintf(&extra, " --mem %d", s.O.MemoryMiB)
	}
	var injs []string
	for _, in := range s.O.Inject {
		if in.Round == n {
			injs = append(injs, fmt.Sprintf("%s@%d", in.Word, n))
		}
	}
	if len(injs) > 0 {
		extra.WriteString(" --inject " + q(strings.Join(injs, ",")))
	}
	out := q(filepath.Join(s.Dir, fmt.Sprintf("replay-r%d", n)))
	return fmt.Sprintf("labctl soak --round %d --seed %d --out %s%s%s", n, s.O.Seed, out, extra.String(), cfg)
}
