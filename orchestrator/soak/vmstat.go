package soak

import (
	"bufio"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The guest's /proc/vmstat around every step says what the kernel did
// while the step ran: how much it swapped, how many THPs it split,
// collapsed and migrated, how many NUMA hinting faults it took, how much
// compaction and KSM ran. The soak samples it at each step boundary on the
// same guest (the sample after one step is the one before the next), so a
// round's delta is the sum of its steps' and a guest replaced mid-round
// starts from its own boot sample.

// VMStat is one sample: counter → value.
type VMStat map[string]int64

// vmstatPrefixes select the counters kept (the rest of /proc/vmstat is
// page-cache and allocator noise for this purpose).
var vmstatPrefixes = []string{"pswp", "thp_", "numa_", "compact_", "pgmigrate_", "ksm", "cow_ksm", "swap_ra", "pgsteal_", "pgscan_", "pglazyfree", "pgdemote", "nr_swap", "sys_ksm_"}

// vmstatCmd prints /proc/vmstat and ksmd's own counters (sysfs, not in
// vmstat), prefixed sys_ksm_.
const vmstatCmd = `cat /proc/vmstat; for f in full_scans pages_sharing pages_shared; do [ -r /sys/kernel/mm/ksm/$f ] && echo "sys_ksm_$f $(cat /sys/kernel/mm/ksm/$f)"; done; true`

// gauges are levels, not event counters: their delta is a change of level
// and may be negative.
var gauges = map[string]bool{"sys_ksm_pages_sharing": true, "sys_ksm_pages_shared": true, "nr_swapcached": true}

// ParseVMStat reads "name value" lines, keeping the selected counters.
func ParseVMStat(text string) (VMStat, error) {
	out := VMStat{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || !keptCounter(f[0]) {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("vmstat line %q: %w", sc.Text(), err)
		}
		out[f[0]] = v
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no vmstat counter in %d bytes of output", len(text))
	}
	return out, nil
}

func keptCounter(name string) bool {
	for _, p := range vmstatPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Delta is after − before for the counters that moved. A counter that
// went backwards (not a gauge) means the samples are not of the same
// boot: no delta then, rather than a wrong one.
func Delta(before, after VMStat) (VMStat, error) {
	if before == nil || after == nil {
		return nil, fmt.Errorf("vmstat delta: missing sample")
	}
	d := VMStat{}
	for k, a := range after {
		b, ok := before[k]
		if !ok {
			continue
		}
		if a < b && !gauges[k] {
			return nil, fmt.Errorf("vmstat delta: %s went from %d to %d (not the same boot)", k, b, a)
		}
		if a != b {
			d[k] = a - b
		}
	}
	return d, nil
}

// Add sums d into v.
func (v VMStat) Add(d VMStat) {
	for k, n := range d {
		v[k] += n
	}
}

// Keys are v's counters, sorted.
func (v VMStat) Keys() []string {
	ks := make([]string, 0, len(v))
	for k := range v {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// sampleVMStat reads the guest's counters (bounded: a guest that does not
// answer in time gives no sample, and the step's delta is left out).
func sampleVMStat(ctx context.Context, g *guest) (VMStat, error) {
	if g == nil || g.m == nil {
		return nil, fmt.Errorf("no guest")
	}
	tctx, cancel := context.WithTimeout(ctx, max(g.m.Timeouts.Ping*2, 20*time.Second))
	defer cancel()
	res, err := g.m.Run(tctx, vmstatCmd)
	if err != nil {
		return nil, fmt.Errorf("reading the guest's vmstat: %w", err)
	}
	return ParseVMStat(string(res.Stdout))
}
