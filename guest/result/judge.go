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

// Negative is the negative control: the tracker that reads the hardware
// D bit only, so it must lose what LDT keeps wherever a check has teeth.
const Negative = "naive"

// JudgeNegative is the verdict of a negative-control run that produced a
// result: CAUGHT when it lost pages or data, as it must; otherwise
// NO-TEETH (a failure: the check could not have caught LDT either) where
// teeth are required, NOT-CAUGHT (informational) where they are not (a
// redis checkpoint, a migration without pressure).
func JudgeNegative(lost, required bool) Verdict {
	switch {
	case lost:
		return VCaught
	case required:
		return VNoTeeth
	}
	return VNotCaught
}

// Judge sets c.Verdict from the guest's outcome and the kernel reports the
// host saw during the cell. vanilla says the kernel has no /dev/ldt (the
// LDT trackers' skips there are N/A, not failures).
func Judge(c *Cell, vanilla bool) {
	c.Verdict = judge(c, KnownGap(c.Scenario, c.Tracker))
	if IsMutant(c.Tracker) {
		c.Verdict = judgeMutant(c)
	}
	if c.Verdict == VSkip && vanilla && (c.Tracker == "ldt" || c.Tracker == Negative || IsMutant(c.Tracker)) {
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
	case c.Tracker == Negative:
		if c.NaiveExpectation == Nothing {
			// Behaving like ldt means passing, not failing some other way
			// (an error, over-reporting).
			if c.Outcome == Pass && c.Missed == 0 && c.Corrupted == 0 {
				return VPass
			}
			return VFail
		}
		return JudgeNegative(c.AsExpected && (c.Missed > 0 || c.Corrupted > 0), true)
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

// JudgeCheckpoint judges a run of the incremental checkpoint oracle from
// what ldt-check printed and whether a kernel report appeared; reason is
// r.Reason, completed where the verdict needs a word. The synthetic
// writer carries the negative control; how much redis rewrites between
// rounds is not the lab's to control, so naive missing nothing there is
// informational.
func JudgeCheckpoint(tracker, target string, r *Checkpoint, reports bool) (v Verdict, reason string) {
	reason = r.Reason
	switch {
	case reports:
		return VFail, reason
	case r.Outcome == Skip:
		// Nothing compared, reported or swapped: not a pass, whoever ran.
		return VSkip, reason
	case tracker == Negative:
		v = JudgeNegative(r.Missed > 0, target != "redis")
		switch v {
		case VNotCaught:
			reason = "naive missed nothing on this redis run (informational)"
		case VNoTeeth:
			reason = "the negative control missed nothing: " + reason
		}
		return v, reason
	case r.Outcome != Pass || r.Missed > 0:
		return VFail, reason
	}
	return VPass, reason
}

// JudgeStress maps ldt-stress's exit status (0 nothing lost, 1 lost
// pages, 2 the run failed) and its lost pages to a verdict: the negative
// control must lose writes, every real tracker must lose none. Known
// gaps and kernel reports are the host's to add (orchestrator/stress).
func JudgeStress(tracker string, code, lost int) Verdict {
	switch {
	case code == 2 || (code == 1) != (lost > 0):
		return VError
	case tracker == Negative:
		return JudgeNegative(lost > 0, true)
	case lost > 0:
		return VFail
	}
	return VPass
}
