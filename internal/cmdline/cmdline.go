// Package cmdline edits the guest kernel's extra command line, so every
// guest that needs a kernel option asks for it the same way.
package cmdline

import (
	"strconv"
	"strings"
)

// FakeNUMA returns cmdline with numa=fake=nodes appended, so that
// migration between NUMA nodes (move_pages, the migration selftest, the
// migrate agitator) has somewhere to go. A numa=fake the caller already
// chose is kept as it is.
func FakeNUMA(cmdline string, nodes int) string {
	for _, w := range strings.Fields(cmdline) {
		if strings.HasPrefix(w, "numa=fake=") {
			return cmdline
		}
	}
	return strings.TrimSpace(strings.TrimSpace(cmdline) + " numa=fake=" + strconv.Itoa(nodes))
}
