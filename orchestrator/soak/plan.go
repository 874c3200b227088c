package soak

import (
	"fmt"
	"ldtlab/orchestrator/cell"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// Scenario is a catalogue entry (`ldt-check -list`), kept in the journal
// so that a resumed soak plans and judges exactly as the first session.
type Scenario = cell.Scenario

// Step is one thing a round does in its guest. Kind scenario, stress,
// checkpoint and migrate map to the cell executor's Spec; selftest runs one of the
// kernel's mm selftests; inject is the test aid that makes the kernel
// report on purpose (labtest).
type Step struct {
	Kind     string `json:"kind"` // scenario | stress | checkpoint | migrate | selftest | inject | fuzz
	Scenario string `json:"scenario,omitempty"`
	Tracker  string `json:"tracker,omitempty"`
	Seed     uint64 `json:"seed"`
	Epochs   int    `json:"epochs,omitempty"`
	Target   string `json:"target,omitempty"` // checkpoint: synthetic | redis
	// Stress run.
	Pages    int           `json:"pages,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	THP      bool          `json:"thp,omitempty"`
	// MTHP and Agitators vary the stress run (drawn from its own seed).
	MTHP      string   `json:"mthp,omitempty"`
	Agitators []string `json:"agitators,omitempty"`
	Test      string   `json:"test,omitempty"` // selftest
	Word      string   `json:"word,omitempty"` // inject: labtest trigger word
}

// Name is the step's row in the report's scenario × tracker table.
func (s Step) Name() string {
	switch s.Kind {
	case "scenario":
		return s.Scenario
	case "stress":
		if s.THP {
			return "stress (thp)"
		}
		return "stress"
	case "checkpoint":
		return "checkpoint-" + s.Target
	case "migrate":
		return "migrate-redis"
	case "selftest":
		return "selftest " + s.Test
	case "inject":
		return "inject " + s.Word
	}
	return s.Kind
}

func (s Step) String() string {
	if s.Kind == "fuzz" {
		return fmt.Sprintf("fuzz %s seed %d", s.Duration, s.Seed)
	}
	switch s.Kind {
	case "scenario":
		return fmt.Sprintf("%s × %s seed %d epochs %d", s.Scenario, s.Tracker, s.Seed, s.Epochs)
	case "stress":
		x := ""
		if s.MTHP != "" {
			x += " mthp=" + s.MTHP
		}
		if s.Agitators != nil {
			x += " agitators=" + strings.Join(s.Agitators, ",")
		}
		return fmt.Sprintf("stress %s %d pages %s thp=%v%s seed %d", s.Tracker, s.Pages, s.Duration, s.THP, x, s.Seed)
	case "checkpoint":
		return fmt.Sprintf("checkpoint %s %s seed %d", s.Target, s.Tracker, s.Seed)
	case "migrate":
		return fmt.Sprintf("migrate redis %s (3 rounds, 8000 keys, pressure)", s.Tracker)
	case "selftest":
		return "selftest " + s.Test
	case "inject":
		if s.Word == StuckWord {
			return "inject a step past its time limit (stuck)"
		}
		return "inject labtest " + s.Word
	}
	return s.Kind
}

// Mix sizes a round.
type Mix struct {
	// Light rounds are short (tests): two small cells and a short stress
	// run, no redis and no selftests.
	Light    bool
	GuestMiB int
	Trackers []string // scenario trackers; default ldt and the references
}

// Trackers a round draws from: ldt and the references (naive is the
// negative control: CAUGHT is its pass).
var Trackers = []string{"ldt", "naive", "softdirty", "pagemap-scan"}

// cheapSelftests take seconds under TCG (orchestrator/mmselftests runs them all).
var cheapSelftests = []string{"mkdirty", "madv_populate", "soft-dirty", "mremap_dontunmap"}

// RoundSeed derives round n's seed from the soak's base seed, so any
// round can be replayed alone from the seed printed for it.
func RoundSeed(base uint64, n int) uint64 {
	// splitmix64 of base+n: neighbouring rounds get unrelated seeds.
	z := base + uint64(n)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// PlanRound draws a round's steps from its seed alone (and the catalogue
// and mix, which the journal keeps): the same seed gives the same round.
func PlanRound(seed uint64, cat []Scenario, mix Mix) []Step {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	trackers := mix.Trackers
	if len(trackers) == 0 {
		trackers = Trackers
	}
	cat = slices.Clone(cat)
	sort.Slice(cat, func(i, j int) bool { return cat[i].Name < cat[j].Name })
	guestPages := mix.GuestMiB * 256
	if guestPages == 0 {
		guestPages = 768 * 256
	}
	sub := func() uint64 { return rng.Uint64() }
	var steps []Step
	nCells := 3 + rng.IntN(4)
	if mix.Light {
		nCells = 2
	}
	for i := 0; i < nCells && len(cat) > 0; i++ {
		s := cat[rng.IntN(len(cat))]
		var ok []string
		for _, t := range trackers {
			if s.Allows(t) {
				ok = append(ok, t)
			}
		}
		if len(ok) == 0 {
			continue
		}
		st := Step{Kind: "scenario", Scenario: s.Name, Tracker: ok[rng.IntN(len(ok))], Seed: sub()}
		// 0 keeps the scenario's own default; otherwise 2-6 epochs.
		if e := rng.IntN(6); e > 0 {
			st.Epochs = e + 1
		}
		if mix.Light {
			st.Epochs = 2
		}
		steps = append(steps, st)
	}
	stressP := 0.6
	if mix.Light {
		stressP = 1
	}
	if rng.Float64() < stressP {
		st := Step{Kind: "stress", Seed: sub(), THP: rng.IntN(3) == 0}
		switch x := rng.Float64(); {
		case x < 0.6:
			st.Tracker = "ldt"
		case x < 0.85:
			st.Tracker = "pagemap-scan"
		default:
			st.Tracker = "naive"
		}
		switch x := rng.Float64(); {
		case mix.Light:
			st.Pages = 1024 + rng.IntN(3072)
		case x < 0.7:
			st.Pages = 2048 + rng.IntN(14336)
		case x < 0.9:
			st.Pages = 16384 + rng.IntN(49152)
		default:
			// Beyond the guest's memory: it must swap to keep the set.
			st.Pages = guestPages*8/10 + rng.IntN(guestPages/2)
		}
		st.Duration = time.Duration(5+rng.IntN(36)) * time.Second
		if mix.Light {
			st.Duration = time.Duration(3+rng.IntN(3)) * time.Second
			st.THP = false
		} else {
			varyStress(&st)
		}
		steps = append(steps, st)
	}
	if !mix.Light && rng.Float64() < 0.2 {
		st := Step{Kind: "checkpoint", Target: "redis", Tracker: []string{"ldt", "softdirty"}[rng.IntN(2)], Seed: sub()}
		if rng.IntN(4) == 0 {
			st.Target = "synthetic"
		}
		steps = append(steps, st)
	}
	if !mix.Light && rng.Float64() < 0.08 {
		steps = append(steps, Step{Kind: "selftest", Test: cheapSelftests[rng.IntN(len(cheapSelftests))]})
	}
	// ldt-fuzz beside the rest (its own draw, so the plans above stay
	// what they were).
	if fr := rand.New(rand.NewPCG(seed, 0xf022)); !mix.Light && fr.Float64() < FuzzShare {
		steps = append(steps, Step{Kind: "fuzz", Seed: fr.Uint64(), Duration: time.Duration(30+fr.IntN(151)) * time.Second})
	}
	// Shuffle so stress and checkpoint do not always come last.
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	// Now and then the short migration of redis (issue 21). It draws from
	// a generator of its own, so every other step of a round is what it
	// was before migrations were drawn (old seeds replay unchanged).
	mrng := rand.New(rand.NewPCG(seed^0x6d6967726174, seed))
	if !mix.Light && mrng.Float64() < 0.1 {
		st := Step{Kind: "migrate", Tracker: []string{"ldt", "ldt", "softdirty", "naive"}[mrng.IntN(4)], Seed: mrng.Uint64()}
		at := mrng.IntN(len(steps) + 1)
		steps = append(steps[:at], append([]Step{st}, steps[at:]...)...)
	}
	return steps
}

// FuzzShare is the share of (full) rounds that run ldt-fuzz.
var FuzzShare = 0.3

// Injection is a labtest trigger to fire in one round (testing aid).
type Injection struct {
	Word  string `json:"word"` // warn | panic | bug | ...
	Round int    `json:"round"`
}

// ParseInject reads "warn@2,panic@4".
func ParseInject(s string) ([]Injection, error) {
	var out []Injection
	for _, part := range splitComma(s) {
		var inj Injection
		at := -1
		for i := len(part) - 1; i >= 0; i-- {
			if part[i] == '@' {
				at = i
				break
			}
		}
		if at <= 0 {
			return nil, fmt.Errorf("--inject %q: want WORD@ROUND, e.g. warn@2", part)
		}
		inj.Word = part[:at]
		if _, err := fmt.Sscanf(part[at+1:], "%d", &inj.Round); err != nil || inj.Round < 1 {
			return nil, fmt.Errorf("--inject %q: the round must be a number ≥ 1", part)
		}
		if !slices.Contains([]string{"warn", "bug", "panic", "list", "vmbug", StuckWord}, inj.Word) {
			return nil, fmt.Errorf("--inject %q: the word must be a labtest trigger (warn, bug, panic, list, vmbug) or %s", part, StuckWord)
		}
		out = append(out, inj)
	}
	return out, nil
}

// StuckWord injects a step that runs out of its time limit (a guest
// command that sleeps past it), so a soak's dump of a stuck step can be
// tested on a real guest; it is no labtest trigger.
const StuckWord = "stuck"

// withInjections inserts round n's injections after its first step, so
// the kernel reports in the middle of the round.
func withInjections(steps []Step, n int, injs []Injection) []Step {
	var add []Step
	for _, in := range injs {
		if in.Round == n {
			add = append(add, Step{Kind: "inject", Word: in.Word})
		}
	}
	if len(add) == 0 {
		return steps
	}
	at := min(1, len(steps))
	out := append(slices.Clone(steps[:at]), add...)
	return append(out, steps[at:]...)
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// stressAgitators are the ldt-stress agitators a soak draws from (those
// every lab guest has; numa-balancing needs a kernel built with it, so it
// runs only in the rounds that take every available agitator).
var stressAgitators = []string{"madvfree", "pageout", "migrate", "uffd-wp", "thp-split", "thp-collapse", "gup-write", "procmem", "odirect", "memcg", "fork", "ksm", "compact"}

// varyStress draws, from the run's own seed, half the time a random subset
// of the agitators (a race may need fewer, faster ones) and a quarter of
// the time an mTHP size for a run without PMD THP.
func varyStress(st *Step) {
	r := rand.New(rand.NewPCG(st.Seed, 0xa917))
	if r.IntN(2) == 0 {
		var pick []string
		for _, a := range stressAgitators {
			if (a == "uffd-wp" && st.Tracker == "pagemap-scan") || ((a == "thp-split" || a == "thp-collapse") && !st.THP) {
				continue // unavailable for this run: ldt-stress refuses it by name
			}
			if r.IntN(2) == 0 {
				pick = append(pick, a)
			}
		}
		if len(pick) == 0 {
			pick = []string{"madvfree"}
		}
		st.Agitators = pick
	}
	if !st.THP && r.IntN(4) == 0 {
		st.MTHP = []string{"16kB", "32kB", "64kB", "128kB"}[r.IntN(4)]
	}
}
