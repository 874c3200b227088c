package result

// Mutants are the deliberately broken trackers of guest/tracker: each must
// be caught by at least one cell, or the catalogue has no teeth against
// that class of bug.
var Mutants = []string{"mutant-all", "mutant-noswapin", "mutant-pfn"}

// IsMutant tells a deliberately broken tracker.
func IsMutant(t string) bool {
	for _, m := range Mutants {
		if m == t {
			return true
		}
	}
	return false
}

// Judge sets c.Verdict from the guest's outcome and the kernel reports the
// host saw during the cell. vanilla says the kernel has no /dev/ldt (the
// LDT trackers' skips there are N/A, not failures).
func Judge(c *Cell, vanilla bool) {
	c.Verdict = judge(c, KnownGap(c.Scenario, c.Tracker))
	if IsMutant(c.Tracker) {
		c.Verdict = judgeMutant(c)
	}
	if c.Verdict == VSkip && vanilla && (c.Tracker == "ldt" || c.Tracker == "naive" || IsMutant(c.Tracker)) {
		c.Verdict, c.Reason = VNA, "the vanilla kernel has no /dev/ldt"
	}
}

func judge(c *Cell, gap string) Verdict {
	if len(c.KernelReport) > 0 {
		return VFail
	}
	switch {
	case c.Outcome == Skip:
		return VSkip
	case c.Tracker == "naive":
		if c.NaiveExpectation == Nothing {
			// Behaving like ldt means passing, not failing some other way
			// (an error, over-reporting).
			if c.Outcome == Pass && c.Missed == 0 && c.Corrupted == 0 {
				return VPass
			}
			return VFail
		}
		if c.AsExpected && (c.Missed > 0 || c.Corrupted > 0) {
			return VCaught
		}
		return VNoTeeth
	default:
		if c.Missed == 0 && c.Corrupted == 0 && c.Outcome == Pass {
			return VPass
		}
		// A known gap excuses missed pages only: not corruption, not an
		// error, not over-reporting.
		if gap != "" && c.Corrupted == 0 && c.Missed > 0 && c.Error == "" && c.QuietReported == 0 && c.Unexplained == 0 && c.Outcome == Fail {
			c.Reason = "known kernel gap: " + gap + "; " + c.Reason
			return VKnownGap
		}
		return VFail
	}
}

// judgeMutant turns a mutant's cell into CAUGHT (the catalogue failed
// it: what must happen somewhere) or SURVIVED (this cell did not notice;
// informational). A skip or a kernel report stays a failure.
func judgeMutant(c *Cell) Verdict {
	switch {
	case len(c.KernelReport) > 0:
		return VFail
	case c.Outcome == Skip:
		return VSkip
	case c.Outcome == Fail:
		return VCaught
	}
	return VSurvived
}
