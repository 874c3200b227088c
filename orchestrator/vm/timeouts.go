package vm

import (
	"math"
	"os"
	"strconv"
	"time"

	"ldtlab/orchestrator/accel"
)

// Timeouts are the lab's limits, as data. Base values fit hardware
// virtualization; Scaled multiplies them for TCG, where the guest runs
// several times slower.
type Timeouts struct {
	Scale    float64
	Boot     time.Duration // QEMU start → guest agent ready
	Command  time.Duration // default limit of one guest command
	QMP      time.Duration // one QMP call
	Shutdown time.Duration // ACPI powerdown → exit
	Grace    time.Duration // SIGTERM → SIGKILL
	Ping     time.Duration // one liveness probe of the guest agent
	Crash    time.Duration // panic seen → rest of the report printed
}

var base = Timeouts{
	Scale:    1,
	Boot:     20 * time.Second,
	Command:  120 * time.Second,
	QMP:      3 * time.Second,
	Shutdown: 10 * time.Second,
	Grace:    2 * time.Second,
	Ping:     5 * time.Second,
	Crash:    1 * time.Second,
}

// maxTimeout caps scaled timeouts (about 100 years: "never").
const maxTimeout = time.Duration(1<<62 - 1)

// ScaleFor is the slowdown factor of an accelerator. LDTLAB_TIMEOUT_SCALE
// overrides it (slow CI machines, debugging).
func ScaleFor(k accel.Kind) float64 {
	if s, err := strconv.ParseFloat(os.Getenv("LDTLAB_TIMEOUT_SCALE"), 64); err == nil && s > 0 && !math.IsNaN(s) {
		return s
	}
	if k == accel.KVM {
		return 1
	}
	return 4
}

// Scaled returns the timeouts for an accelerator.
func Scaled(k accel.Kind) Timeouts { return ScaledBy(ScaleFor(k)) }

// Slower multiplies the guest-side timeouts by f for a kernel that runs
// f times slower than the debug kernel (the sanitize kernel), unless an
// override (LDTLAB_TIMEOUT_SCALE) fixed the scale.
func (t Timeouts) Slower(f float64) Timeouts {
	if _, err := strconv.ParseFloat(os.Getenv("LDTLAB_TIMEOUT_SCALE"), 64); err == nil {
		return t
	}
	return ScaledBy(t.Scale * f)
}

// ScaledBy returns the base timeouts multiplied by s.
func ScaledBy(s float64) Timeouts {
	d := func(x time.Duration) time.Duration {
		// A huge scale (to disable timeouts while debugging) must not
		// overflow into a negative, instantly expired duration.
		if f := float64(x) * s; f < float64(maxTimeout) {
			return time.Duration(f)
		}
		return maxTimeout
	}
	return Timeouts{
		Scale:    s,
		Boot:     d(base.Boot),
		Command:  d(base.Command),
		QMP:      d(base.QMP),
		Shutdown: d(base.Shutdown),
		Grace:    base.Grace,
		Ping:     d(base.Ping),
		Crash:    d(base.Crash),
	}
}
