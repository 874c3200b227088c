package report

import (
	"regexp"
	"strings"
)

// Lines that are not headers but steer span detection.
var (
	cutHereRe    = regexp.MustCompile(`^-+\[ cut here \]-+\s*$`)
	endTraceRe   = regexp.MustCompile(`^---\[ end trace(?: [0-9a-f]+)? \]---`)
	endPanicRe   = regexp.MustCompile(`^---\[ end Kernel panic`)
	rebootingRe  = regexp.MustCompile(`^Rebooting in -?\d+ seconds`)
	kernelOffRe  = regexp.MustCompile(`^Kernel Offset: `)
	ruleRe       = regexp.MustCompile(`^={20,}\s*$`)
	newBootRe    = regexp.MustCompile(`^Linux version \d`)
	nmiBacktrace = regexp.MustCompile(`^NMI backtrace for cpu (\d+)`)
	// "func+0x1/0x2", optionally "[module]" and, in symbolized logs,
	// "file.c:12"; symbolizers also print inlined callers as
	// "func file.c:12 [inline]".
	// Older kernels put "[<address>] " before the function and the
	// stack switch marks at the start of a frame line ("<IRQ>  [<..>] f").
	frameRe       = regexp.MustCompile(`^(?:<[A-Z]+> +)?(?:\[<[0-9a-f]+>\] +){0,2}(\? )?([A-Za-z0-9_.$]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[[^\]]*\]| \S+:\d+(?::\d+)?)*| \S+:\d+(?::\d+)? \[inline\])$`)
	rawFrameRe    = regexp.MustCompile(`^(\? )?0x[0-9a-f]+$`)
	stackMarkRe   = regexp.MustCompile(`^</?[A-Z#_]+>$`)
	regLineRe     = regexp.MustCompile(`^(RIP|EIP|Code|RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|DR0|DR3|PKRU):`)
	rcuContinueRe = regexp.MustCompile(`^(rcu:|Sending NMI|NMI backtrace|CPU: \d+|Hardware name:|Tainted:|task:|Call Trace:|Modules linked in:|Task dump for CPU|\t)`)
)

// isTraceLine reports whether a message can appear inside a
// "Call Trace:" block: frames, stack-switch marks and the register dump
// printed when the unwinder crosses from an IRQ stack to the task stack.
func isTraceLine(text string) bool {
	t := strings.TrimSpace(text)
	return frameRe.MatchString(t) || rawFrameRe.MatchString(t) ||
		stackMarkRe.MatchString(t) || regLineRe.MatchString(t)
}

// consequence reports whether a panic message is the kernel giving up
// because of the report s, rather than a failure of its own.
func consequence(msg string, s *span) bool {
	switch {
	case strings.Contains(msg, "panic_on_warn set"):
		return true
	case strings.HasPrefix(msg, "Fatal exception"),
		strings.HasPrefix(msg, "Attempted to kill init!"),
		strings.HasPrefix(msg, "Aiee, killing interrupt handler!"),
		strings.HasPrefix(msg, "Attempted to kill the idle task!"),
		strings.HasPrefix(msg, "Oopsed too often"),
		strings.HasPrefix(msg, "Oops failed to kill thread"):
		return s.sawOops
	case strings.HasPrefix(msg, "hung_task: blocked tasks"):
		return s.typ == TypeHungTask
	case strings.HasPrefix(msg, "softlockup: hung tasks"):
		return s.typ == TypeSoftLockup
	case strings.HasPrefix(msg, "RCU Stall"):
		return s.typ == TypeRCUStall
	case strings.HasPrefix(msg, "Hard LOCKUP"):
		return s.typ == TypeHardLockup
	}
	return false
}
