package cell

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/report"
)

// Checkpoint is one run of the incremental checkpoint oracle.
type Checkpoint struct {
	Target   string          `json:"target"`
	Tracker  string          `json:"tracker"`
	Verdict  result.Verdict  `json:"verdict"`
	Missed   int             `json:"missed"`
	Compared int             `json:"compared_pages"`
	Swapped  int             `json:"swapped_pages_at_end"`
	Reason   string          `json:"reason"`
	Raw      json.RawMessage `json:"raw,omitempty"`
	Reports  []string        `json:"kernel_reports,omitempty"`
	Error    string          `json:"error,omitempty"`
	Took     float64         `json:"took_s"`
}

// Failed tells whether the run is an unexpected outcome (naive's
// NOT-CAUGHT on redis is informational).
func (cp *Checkpoint) Failed() bool { return cp.Verdict.Failed() }

// redisSetup starts redis-server in a memory cgroup far below its data set
// (so it swaps), loads it with redis-benchmark in the background, and
// prints the server's pid.
const redisSetup = `set -e
cg=/sys/fs/cgroup/redis
echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
mkdir -p $cg
# memory.high reclaims (and swaps) above the limit without OOM kills,
# which memory.max would do while the checkpointer faults pages back in.
echo 32M > $cg/memory.high
sh -c 'echo $$ > /sys/fs/cgroup/redis/cgroup.procs; exec redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize no --protected-mode yes >/tmp/redis.log 2>&1' &
for i in $(seq 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p 6379 ping >/dev/null
# 64 MiB of values, twice the cgroup's memory.high, then keep overwriting
# them while the checkpointer runs.
redis-benchmark -p 6379 -q -t set -n 16000 -r 16000 -d 4096 -P 16 >/dev/null
grep -q '^high [1-9]' $cg/memory.events || { echo "redis never exceeded memory.high" >&2; exit 1; }
( redis-benchmark -p 6379 -q -t set,incr,lpush -n 2000000 -r 16000 -d 4096 -P 4 -c 4 >/dev/null 2>&1 & )
pidof redis-server`

func runCheckpoint(ctx context.Context, g Guest, s Spec, c *Cell, reports func() []report.Report) error {
	cp := &Checkpoint{Target: s.Target, Tracker: s.Tracker}
	c.Checkpoint = cp
	fail := func(format string, args ...any) {
		cp.Verdict, cp.Error = result.VFail, fmt.Sprintf(format, args...)
		c.Verdict = cp.Verdict
	}
	var cmd string
	switch s.Target {
	case "synthetic":
		cmd = s.Command()
	case "redis":
		res, err := g.Run(ctx, redisSetup)
		if err != nil {
			fail("starting redis under memory pressure: %v", err)
			return err
		}
		if res.Code != 0 {
			fail("starting redis under memory pressure: exit %d: %s", res.Code, FirstLine(string(res.Stderr)))
			return nil
		}
		pid := strings.Fields(string(res.Stdout))
		if len(pid) == 0 {
			fail("redis-server is not running")
			return nil
		}
		cmd = fmt.Sprintf("PID=%s; %s; pkill redis-benchmark; redis-cli -p 6379 shutdown nosave >/dev/null 2>&1; true", pid[0], s.Command())
	default:
		fail("unknown checkpoint target %q (synthetic, redis)", s.Target)
		return nil
	}
	res, err := g.Run(ctx, cmd)
	c.addReports(reports())
	cp.Reports = c.ReportTitles
	if err != nil {
		fail("%v", err)
		return err
	}
	raw := LastJSON(res.Stdout)
	var v result.Checkpoint
	if err := json.Unmarshal(raw, &v); err != nil {
		fail("no checkpoint result: %s", FirstLine(string(res.Stderr)))
		return nil
	}
	cp.Raw, cp.Missed, cp.Compared, cp.Swapped = raw, v.Missed, v.Compared, v.SwappedAtEnd
	cp.Verdict, cp.Reason = result.JudgeCheckpoint(cp.Tracker, cp.Target, &v, len(cp.Reports) > 0)
	c.Verdict = cp.Verdict
	c.Pages = uint64(v.Compared)
	return nil
}
