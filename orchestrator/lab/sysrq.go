package lab

import (
	"context"
	"fmt"
	"strings"
	"time"

	"ldtlab/orchestrator/vm"
)

// SysrqDump makes the guest kernel dump its state with magic SysRq keys
// ("t": every task's stack, "w": the blocked ones) and returns what it
// printed: after each key, the console lines until the console has been
// quiet for quiet (the next key waits for that), within maxWait in all.
// It types the keys on the serial console when the backend can (the
// kernel answers even when user space and the agent are stuck), else
// writes /proc/sysrq-trigger through the agent. The dump is diagnosis
// for a hang or a timed-out step, not a kernel report.
func (m *Machine) SysrqDump(ctx context.Context, keys string, quiet, maxWait time.Duration) (string, error) {
	lines, cancel := m.con.Subscribe()
	defer cancel()
	sr, serial := m.inst.(vm.SysRqer)
	var b strings.Builder
	deadline := time.After(maxWait)
	for i := 0; i < len(keys); i++ {
		var err error
		if serial {
			err = sr.SysRq(ctx, keys[i])
		} else {
			tctx, tcancel := context.WithTimeout(ctx, m.Timeouts.Ping*2)
			_, err = m.Run(tctx, "echo "+string(keys[i])+" > /proc/sysrq-trigger")
			tcancel()
		}
		if err != nil {
			return b.String(), fmt.Errorf("sysrq %c: %w", keys[i], err)
		}
	collect:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					return b.String(), nil
				}
				if b.Len() < 8<<20 { // bounded: a guest with thousands of tasks
					b.WriteString(l)
					b.WriteByte('\n')
				}
			case <-time.After(quiet):
				break collect
			case <-deadline:
				return b.String(), nil
			case <-ctx.Done():
				return b.String(), ctx.Err()
			}
		}
	}
	return b.String(), nil
}
