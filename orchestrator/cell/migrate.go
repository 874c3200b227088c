package cell

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"ldtlab/guest/result"
	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/report"
)

// MigrateOptions size a migration cell (issue 21).
type MigrateOptions struct {
	// Rounds is the number of pre-copy rounds (the frozen final round
	// comes on top); 0 = 5, negative = none (the initial copy, then the
	// frozen round).
	Rounds int `json:"rounds"`
	// Interval is the time redis runs under load between rounds; 0 = 1 s.
	Interval time.Duration `json:"interval,omitempty"`
	// Pressure runs redis in a memory cgroup whose memory.high is half
	// its data set, so it swaps while it is migrated.
	Pressure bool `json:"pressure"`
	// Keys is the size of the data set in 4 KiB values; 0 = 16000.
	Keys int `json:"keys,omitempty"`
}

// Repro is the `labctl migrate` command line that reruns these options
// under tracker.
func (o MigrateOptions) Repro(tracker string) string {
	cmd := fmt.Sprintf("labctl migrate --tracker %s --rounds %d --keys %d", shquote.Word(tracker), o.Rounds, o.Keys)
	if o.Interval > 0 {
		cmd += fmt.Sprintf(" --interval %s", o.Interval)
	}
	if o.Pressure {
		cmd += " --pressure"
	}
	return cmd
}

func (o MigrateOptions) withDefaults() MigrateOptions {
	switch {
	case o.Rounds == 0:
		o.Rounds = 5
	case o.Rounds < 0:
		o.Rounds = 0
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Keys <= 0 {
		o.Keys = 16000
	}
	return o
}

// Files is a guest that copies files to and from the host (*lab.Machine):
// a migration to another guest carries the image through the host.
type Files interface {
	Download(ctx context.Context, remote, local string) error
	Upload(ctx context.Context, local, remote string) error
}

// Migrate is one migration of redis (issue 21): pre-copy rounds driven by
// the tracker, CRIU dump of the frozen server, its pages replaced by the
// migrator's copy, restore, and the oracles.
type Migrate struct {
	Tracker  string         `json:"tracker"`
	Verdict  result.Verdict `json:"verdict"`
	Pressure bool           `json:"pressure"`
	ToGuest  bool           `json:"to_guest"`
	Rounds   int            `json:"rounds"`
	// Copied is the pages copied per round: [0] the initial copy, then
	// each pre-copy round, the last one the frozen final round.
	Copied   []int `json:"copied_pages"`
	Reported []int `json:"reported_pages"`
	// Swapped is the most pages of redis in swap at any round.
	Swapped int `json:"swapped_pages"`
	// The oracles: redis's DEBUG DIGEST before the freeze and after the
	// restore; the restored server answering SET/GET and surviving a
	// redis-benchmark run; the image against the frozen process (its
	// memory, and CRIU's reading of it).
	DigestBefore string `json:"digest_before"`
	DigestAfter  string `json:"digest_after"`
	KeysBefore   int    `json:"keys_before"`
	KeysAfter    int    `json:"keys_after"`
	Restored     bool   `json:"restored"`
	Served       bool   `json:"served"`
	Benchmark    bool   `json:"benchmark"`
	Mismatched   int    `json:"mismatched_pages"`
	DumpedPages  int    `json:"dumped_pages"`
	Differ       int    `json:"differ_pages"`
	Absent       int    `json:"absent_pages"`
	// FromFile: pages CRIU stored that were their file's at the freeze
	// (CRIU's own ptrace writes made them anonymous), given the file's
	// content.
	FromFile int `json:"from_file_pages"`
	// ChangedAfter: pages CRIU read differently from the image although
	// the image equalled them at the freeze (changed while frozen, by
	// CRIU's own work in the process); shown, not a miss.
	ChangedAfter int `json:"changed_after_freeze_pages"`
	// Transfer is the image's size and time through the host (to-guest).
	TransferMiB float64 `json:"transfer_mib,omitempty"`
	TransferS   float64 `json:"transfer_s,omitempty"`
	FrozenMS    float64 `json:"frozen_ms"`
	Reason      string  `json:"reason,omitempty"`
	Error       string  `json:"error,omitempty"`
	// Caught lists what exposed a lost page (digest, crash, pages...).
	Caught  []string        `json:"caught,omitempty"`
	Source  json.RawMessage `json:"source,omitempty"`
	Restore json.RawMessage `json:"restore,omitempty"`
	Reports []string        `json:"kernel_reports,omitempty"`
	Took    float64         `json:"took_s"`
}

// Failed tells whether the run is an unexpected outcome.
func (mg *Migrate) Failed() bool {
	return mg.Verdict.Failed()
}

// Line is the one-line summary `labctl migrate` prints per tracker.
func (mg *Migrate) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-13s %-10s", mg.Tracker, mg.Verdict)
	if mg.Verdict == result.VNA || len(mg.Copied) == 0 {
		fmt.Fprintf(&b, " %s", FirstLine(mg.Reason+" "+mg.Error))
		return b.String()
	}
	var parts []string
	for _, n := range mg.Copied {
		parts = append(parts, strconv.Itoa(n))
	}
	fmt.Fprintf(&b, " rounds %d, pages copied per round %s (initial … final, frozen %.0f ms)", mg.Rounds, strings.Join(parts, " "), mg.FrozenMS)
	if mg.DigestBefore != "" {
		eq := "="
		if mg.DigestAfter != mg.DigestBefore {
			eq = "≠"
		}
		fmt.Fprintf(&b, ", digest %s %s %s", short(mg.DigestBefore), eq, short(mg.DigestAfter))
	}
	if mg.DumpedPages > 0 {
		fmt.Fprintf(&b, ", CRIU %d pages: %d differ (%d never copied; %d from their file, %d changed after the freeze)", mg.DumpedPages, mg.Differ, mg.Absent, mg.FromFile, mg.ChangedAfter)
	}
	switch {
	case !mg.Restored:
		b.WriteString(", not restored")
	case mg.Served && mg.Benchmark:
		b.WriteString(", serves GET/SET, benchmark ok")
	case mg.Served:
		b.WriteString(", serves GET/SET, benchmark FAILED")
	default:
		b.WriteString(", does not serve")
	}
	if mg.Pressure {
		fmt.Fprintf(&b, ", %d pages in swap", mg.Swapped)
	}
	if mg.ToGuest {
		fmt.Fprintf(&b, ", %.1f MiB through the host in %.1f s", mg.TransferMiB, mg.TransferS)
	}
	if len(mg.Caught) > 0 {
		fmt.Fprintf(&b, "; caught by: %s", strings.Join(mg.Caught, ", "))
	}
	if mg.Error != "" {
		fmt.Fprintf(&b, "; %s", FirstLine(mg.Error))
	} else if mg.Verdict.Failed() && mg.Reason != "" {
		fmt.Fprintf(&b, "; %s", FirstLine(mg.Reason))
	}
	return b.String()
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12] + "…"
	}
	if s == "" {
		return "(none)"
	}
	return s
}

// migrateBench is where the load's pid is kept in the guest.
const migrateBench = "/tmp/ldtlab-migrate-bench.pid"

// migrateSetup starts redis-server in its own session (CRIU dumps it
// alone), in a memory cgroup far below its data set with pressure, fills
// it and leaves redis-benchmark overwriting and reading it; it prints
// the server's pid.
func migrateSetup(o MigrateOptions) string {
	cg := ""
	if o.Pressure {
		cg = "/sys/fs/cgroup/ldtlab-migrate"
	}
	return fmt.Sprintf(`set -e
if redis-cli -p 6379 ping >/dev/null 2>&1; then echo "a redis-server already listens on 6379" >&2; exit 1; fi
cg=%[1]s
if [ -n "$cg" ]; then
  echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
  mkdir -p $cg
  # memory.high at half the data set reclaims (and swaps) above the
  # limit without OOM kills.
  echo %[4]d > $cg/memory.high
fi
CG=$cg setsid sh -c '[ -z "$CG" ] || echo $$ > $CG/cgroup.procs; exec redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize no --enable-debug-command local --logfile ""' </dev/null >/dev/null 2>&1 &
for i in $(seq 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p 6379 ping >/dev/null
redis-benchmark -p 6379 -q -t set -n %[2]d -r %[2]d -d 4096 -P 16 >/dev/null
if [ -n "$cg" ]; then grep -q '^high [1-9]' $cg/memory.events || { echo "redis never exceeded memory.high" >&2; exit 1; }; fi
redis-benchmark -p 6379 -q -t set,get,incr -n 100000000 -r %[2]d -d 4096 -P 4 -c 4 </dev/null >/dev/null 2>&1 &
echo $! > %[3]s
pidof redis-server`, shquote.Always(cg), o.Keys, migrateBench, o.Keys*2048)
}

// migrateQuiesce stops the load and waits until redis has closed its
// connections, then prints redis's own digest of the data set.
const migrateQuiesce = `bp=$(cat ` + migrateBench + ` 2>/dev/null); [ -z "$bp" ] || kill $bp 2>/dev/null
for i in $(seq 300); do [ -n "$bp" ] && kill -0 $bp 2>/dev/null || break; sleep 0.1; done
for i in $(seq 300); do [ "$(redis-cli -p 6379 info clients | tr -d '\r' | sed -n 's/^connected_clients://p')" = 1 ] && break; sleep 0.1; done
echo "digest $(redis-cli -p 6379 debug digest) keys $(redis-cli -p 6379 dbsize)"`

// migrateCheck asks the restored server for its digest, stores and reads
// a key and runs redis-benchmark against it (as many requests as the
// data set has keys, over all of them); every step is bounded, and a
// server that does not answer its digest is not asked anything more.
func migrateCheck(o MigrateOptions) string {
	return fmt.Sprintf(`d=$(timeout 120 redis-cli -p 6379 debug digest 2>&1) || { echo "digest no-answer keys none"; exit 0; }
echo "digest $d keys $(timeout 30 redis-cli -p 6379 dbsize 2>&1)"
echo "setget $(timeout 30 redis-cli -p 6379 set ldtlab:migrated yes 2>&1) $(timeout 30 redis-cli -p 6379 get ldtlab:migrated 2>&1)"
timeout 300 redis-benchmark -p 6379 -q -t set,get -n %[1]d -r %[1]d -d 4096 -P 16 >/tmp/ldtlab-migrate-bench.out 2>&1; echo "bench $?"
echo "ping $(timeout 30 redis-cli -p 6379 ping 2>&1)"`, o.Keys)
}

// migrateCleanup stops whatever the cell left running and removes the
// image (run on both guests).
func migrateCleanup(dir string) string {
	return fmt.Sprintf(`bp=$(cat %[1]s 2>/dev/null); [ -z "$bp" ] || kill $bp 2>/dev/null
for p in $(pidof redis-server); do kill -9 $p; done
rm -rf %[2]s %[1]s /tmp/ldtlab-migrate-bench.out
sleep 0.2; rmdir /sys/fs/cgroup/ldtlab-migrate 2>/dev/null; true`, migrateBench, shquote.Always(dir))
}

// migrateDir picks where the image goes: the data disk when the guest
// has one (the image is as large as redis), else /tmp.
const migrateDir = `if grep -q ' /mnt/data ' /proc/mounts; then echo /mnt/data/ldtlab-migrate; else echo /tmp/ldtlab-migrate; fi`

var digestLine = regexp.MustCompile(`(?m)^digest (\S+) keys (\S+)`)

func parseDigest(out string) (string, int) {
	m := digestLine.FindStringSubmatch(out)
	if m == nil {
		return "", -1
	}
	n, err := strconv.Atoi(m[2])
	if err != nil {
		n = -1
	}
	return m[1], n
}

// RunMigrate migrates redis from src to dst (the same guest, or another
// one whose image crosses the host: dst must then be Files, and so must
// src) and judges it. The cell's kernel reports are those of both guests.
func RunMigrate(ctx context.Context, src, dst Guest, s Spec, c *Cell) error {
	o := s.Migrate.withDefaults()
	toGuest := dst != src
	mg := &Migrate{Tracker: s.Tracker, Pressure: o.Pressure, ToGuest: toGuest, Rounds: o.Rounds}
	c.Migrate = mg
	start := time.Now()
	defer func() { mg.Took = time.Since(start).Seconds() }()
	marks := []int{src.ReportMark()}
	if toGuest {
		marks = append(marks, dst.ReportMark())
	}
	reports := func() {
		reps := src.ReportsSince(ctx, marks[0])
		if toGuest {
			reps = append(reps, dst.ReportsSince(ctx, marks[1])...)
		}
		c.addReports(reps)
		mg.Reports = c.ReportTitles
	}
	fail := func(format string, args ...any) {
		mg.Verdict, mg.Error = result.VFail, fmt.Sprintf(format, args...)
	}
	defer func() {
		if len(mg.Reports) > 0 {
			mg.Verdict = result.VFail
		}
		c.Verdict = mg.Verdict
	}()
	dir, err := guestDir(ctx, src)
	if err != nil {
		fail("%v", err)
		return err
	}
	cleanup := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		src.Run(cctx, migrateCleanup(dir))
		if toGuest {
			dst.Run(cctx, migrateCleanup(dir))
		}
	}
	defer cleanup()
	cleanup() // a previous cell that died half way
	if toGuest {
		// The restored server keeps its pid, which must be free on the
		// destination (the guests have no pid namespaces): start it on
		// the source well above every pid the destination has used.
		if err := pidsAbove(ctx, src, dst); err != nil {
			reports()
			fail("%v", err)
			return err
		}
	}
	// Setup: redis under load (and pressure).
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	res, err := src.Run(sctx, migrateSetup(o))
	cancel()
	if err != nil {
		reports()
		fail("starting redis under load: %v", err)
		return err
	}
	pid := strings.TrimSpace(string(res.Stdout))
	if res.Code != 0 || pid == "" || strings.ContainsAny(pid, " \n") {
		reports()
		fail("starting redis under load: exit %d: %s%s", res.Code, FirstLine(string(res.Stderr)), FirstLine(pid))
		return nil
	}
	// The source side: pre-copy rounds, freeze, final round, dump,
	// replace. Bounded in the guest, and here a little later.
	guestLimit := 15 * time.Minute
	cmd := fmt.Sprintf("ldt-migrate -q -tracker %s -pid %s -dir %s -rounds %d -interval %s -timeout %s -quiesce %s",
		shquote.Always(s.Tracker), pid, shquote.Always(dir), o.Rounds, o.Interval, guestLimit, shquote.Always(migrateQuiesce))
	mctx, cancel := context.WithTimeout(ctx, guestLimit+2*time.Minute)
	res, err = src.Run(mctx, cmd)
	cancel()
	if err != nil {
		reports()
		fail("migrator: %v", err)
		return err
	}
	raw := LastJSON(res.Stdout)
	var sr result.Migration
	if jerr := json.Unmarshal(raw, &sr); jerr != nil {
		reports()
		fail("ldt-migrate exited %d without a result (%v): %s", res.Code, jerr, FirstLine(string(res.Stderr)))
		return nil
	}
	mg.Source = raw
	for _, r := range sr.Rounds {
		mg.Copied = append(mg.Copied, r.Copied)
		mg.Reported = append(mg.Reported, r.Reported)
		mg.Swapped = max(mg.Swapped, r.Swapped)
	}
	mg.Mismatched, mg.FrozenMS, mg.FromFile = sr.Mismatched, sr.Frozen, sr.FromFile
	mg.DigestBefore, mg.KeysBefore = parseDigest(sr.QuiesceOutput)
	if sr.Replace != nil {
		mg.DumpedPages, mg.Differ, mg.Absent, mg.ChangedAfter = sr.Replace.Pages, sr.Replace.Differ, sr.Replace.Absent, sr.Replace.ChangedAfter
	}
	switch sr.Outcome {
	case "skip":
		reports()
		mg.Verdict, mg.Reason = result.VNA, sr.Reason
		return nil
	case "pass":
	default:
		reports()
		why := sr.Reason
		if sr.DumpLog != "" {
			why += "\n" + sr.DumpLog
		}
		fail("the migration's source side failed: %s", why)
		return nil
	}
	if mg.DigestBefore == "" || mg.KeysBefore <= 0 {
		reports()
		fail("no digest of the data set before the freeze (quiesce printed %q)", sr.QuiesceOutput)
		return nil
	}
	// The image crosses the host to the destination guest.
	if toGuest {
		if err := carry(ctx, src, dst, dir, mg); err != nil {
			reports()
			fail("carrying the image through the host: %v", err)
			return err
		}
	}
	// Restore and the oracles, on the destination.
	rctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	res, err = dst.Run(rctx, fmt.Sprintf("ldt-migrate -q -restore -dir %s -pid %s -timeout 6m", shquote.Always(dir), pid))
	cancel()
	if err != nil {
		reports()
		fail("restore: %v", err)
		return err
	}
	mg.Restore = LastJSON(res.Stdout)
	var rr result.MigrationRestore
	if jerr := json.Unmarshal(mg.Restore, &rr); jerr != nil {
		reports()
		fail("ldt-migrate -restore exited %d without a result (%v): %s", res.Code, jerr, FirstLine(string(res.Stderr)))
		return nil
	}
	mg.Restored = rr.Outcome == "pass"
	died := !mg.Restored && strings.Contains(rr.Reason, "died right after")
	if !mg.Restored && !died {
		reports()
		fail("criu restore failed: %s\n%s", rr.Reason, rr.Log)
		return nil
	}
	if mg.Restored {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		res, err = dst.Run(cctx, migrateCheck(o))
		cancel()
		if err != nil {
			reports()
			fail("checking the restored server: %v", err)
			return err
		}
		out := string(res.Stdout)
		mg.DigestAfter, mg.KeysAfter = parseDigest(out)
		mg.Served = strings.Contains(out, "setget OK yes")
		mg.Benchmark = strings.Contains(out, "bench 0") && strings.Contains(out, "ping PONG")
	}
	reports()
	judgeMigrate(mg, died)
	return nil
}

// judgeMigrate sets the verdict of a migration that ran to its end.
func judgeMigrate(mg *Migrate, died bool) {
	var caught []string
	if died {
		caught = append(caught, "the restored server died")
	}
	if mg.Restored && mg.DigestAfter != mg.DigestBefore {
		caught = append(caught, "digest differs")
	}
	if mg.Restored && !mg.Served {
		caught = append(caught, "no answer to SET/GET")
	}
	if mg.Restored && !mg.Benchmark {
		caught = append(caught, "did not survive redis-benchmark")
	}
	if mg.Mismatched > 0 {
		caught = append(caught, fmt.Sprintf("%d pages differ from the frozen process", mg.Mismatched))
	}
	if mg.Differ > 0 {
		caught = append(caught, fmt.Sprintf("%d of CRIU's pages differ", mg.Differ))
	}
	mg.Caught = caught
	switch {
	case len(mg.Reports) > 0:
		mg.Verdict = result.VFail
		mg.Reason = "kernel reports: " + strings.Join(mg.Reports, "; ")
	case mg.Pressure && mg.Swapped == 0:
		// Under pressure nothing was in swap: the path naive loses
		// pages on was not reached.
		mg.Verdict, mg.Reason = result.VSkip, "precondition not met: no page of redis was in swap at any round"
	case mg.Tracker == result.Negative:
		// Without swap the hardware D bit alone may well be enough:
		// teeth are required under pressure only.
		mg.Verdict = result.JudgeNegative(len(caught) > 0, mg.Pressure)
		switch mg.Verdict {
		case result.VCaught:
			mg.Reason = "the negative control lost pages: " + strings.Join(caught, ", ")
		case result.VNoTeeth:
			mg.Reason = "the negative control lost nothing under pressure"
		default:
			mg.Reason = "naive lost nothing without memory pressure (informational)"
		}
	case len(caught) > 0:
		mg.Verdict, mg.Reason = result.VFail, strings.Join(caught, ", ")
	default:
		mg.Verdict = result.VPass
	}
}

// pidsAbove makes the source hand out pids above the destination's last
// pid (with a margin for what the destination spawns meanwhile).
func pidsAbove(ctx context.Context, src, dst Guest) error {
	res, err := dst.Run(ctx, "cut -d' ' -f5 /proc/loadavg")
	if err != nil {
		return err
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		return fmt.Errorf("the destination's last pid: %q", res.Stdout)
	}
	bctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	res, err = src.Run(bctx, fmt.Sprintf("ldt-migrate -burn-pids %d -timeout 5m", last+1000))
	if err != nil {
		return err
	}
	if res.Code != 0 {
		return fmt.Errorf("raising the source's pids above the destination's (%d): %s", last, FirstLine(string(res.Stderr)))
	}
	return nil
}

// guestDir asks the guest where the image goes.
func guestDir(ctx context.Context, g Guest) (string, error) {
	res, err := g.Run(ctx, migrateDir)
	if err != nil {
		return "", err
	}
	d := strings.TrimSpace(string(res.Stdout))
	if res.Code != 0 || !strings.HasPrefix(d, "/") {
		return "", fmt.Errorf("no image directory in the guest: exit %d %q", res.Code, d)
	}
	return d, nil
}

// carry copies the image directory from src to the same path on dst
// through a host temporary directory.
func carry(ctx context.Context, src, dst Guest, dir string, mg *Migrate) error {
	sf, ok1 := src.(Files)
	df, ok2 := dst.(Files)
	if !ok1 || !ok2 {
		return fmt.Errorf("the guests cannot copy files through the host")
	}
	tmp, err := os.MkdirTemp("", "ldtlab-migrate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	t0 := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	local := filepath.Join(tmp, "image")
	if err := sf.Download(cctx, dir, local); err != nil {
		return err
	}
	var size int64
	filepath.Walk(local, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			size += fi.Size()
		}
		return nil
	})
	if res, err := dst.Run(cctx, "rm -rf "+shquote.Always(dir)+" && mkdir -p "+shquote.Always(filepath.Dir(dir))); err != nil || res.Code != 0 {
		return fmt.Errorf("preparing %s on the destination: %v %s", dir, err, res.Stderr)
	}
	if err := df.Upload(cctx, local, dir); err != nil {
		return err
	}
	mg.TransferMiB = float64(size) / (1 << 20)
	mg.TransferS = time.Since(t0).Seconds()
	return nil
}

// runMigrate is RunCell's migration: restored on the same guest.
func runMigrate(ctx context.Context, g Guest, s Spec, c *Cell, _ func() []report.Report) error {
	return RunMigrate(ctx, g, g, s, c)
}
