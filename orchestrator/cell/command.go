package cell

// The command lines of a cell, formatted once: the guest command the
// executor runs (parsed by guest/cmd/ldt-check, ldt-stress) and the
// labctl command that reruns the cell alone.

import (
	"fmt"
	"strings"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/stress"
)

// Command is the guest command line of the cell's program. For a redis
// checkpoint the target's pid is the shell variable $PID (the executor
// starts redis first); a migration runs several commands
// (cell/migrate.go) and has none here.
func (s Spec) Command() string {
	q := shquote.Word
	switch s.Kind {
	case KindScenario:
		return fmt.Sprintf("ldt-check -q -scenario %s -tracker %s -seed %d%s", q(s.scenario()), q(s.Tracker), s.Seed, s.epochsFlag("-"))
	case KindCompare:
		return fmt.Sprintf("ldt-check -q -compare -scenario %s -seed %d%s", q(s.scenario()), s.Seed, s.epochsFlag("-"))
	case KindCheckpoint:
		if s.Target == "redis" {
			return fmt.Sprintf("ldt-check -q -checkpoint -tracker %s -pid $PID -rounds 5 -interval 1s", q(s.Tracker))
		}
		return fmt.Sprintf("ldt-check -q -checkpoint-synthetic -tracker %s -rounds 5 -mb 48 -seed %d", q(s.Tracker), s.Seed)
	case KindStress:
		return stress.Command(s.Tracker, s.THP, s.stressOptions())
	}
	return ""
}

// Repro is the labctl command line that reruns this cell alone, without
// the kernel flags (the caller adds kernel.Options.Flags) and without the
// guest size; "" where no verb runs the kind alone (a comparison or a
// checkpoint run: `labctl check` runs them with the catalogue).
func (s Spec) Repro() string {
	q := shquote.Word
	switch s.Kind {
	case KindScenario:
		// The scenario names come from the guest's catalogue: quoted.
		return fmt.Sprintf("labctl check --scenario %s --tracker %s --seed %d%s", q(s.scenario()), q(s.Tracker), s.Seed, s.epochsFlag("--"))
	case KindStress:
		o := s.stressOptions()
		cmd := fmt.Sprintf("labctl stress --tracker %s --seed %d --for %s --pages %d --thp=%v", q(s.Tracker), o.Seed, o.Duration, o.Pages, s.THP)
		if o.MTHP != "" {
			cmd += " --mthp " + q(o.MTHP)
		}
		if o.Agitators != nil {
			cmd += " --agitators " + q(strings.Join(o.Agitators, ","))
		}
		return cmd
	case KindMigrate:
		return s.Migrate.Repro(s.Tracker)
	}
	return ""
}

func (s Spec) epochsFlag(dash string) string {
	if s.Epochs > 0 {
		return fmt.Sprintf(" %sepochs %d", dash, s.Epochs)
	}
	return ""
}

// stressOptions are the run's options with the cell's seed.
func (s Spec) stressOptions() stress.Options {
	o := s.Stress
	if o.Seed == 0 {
		o.Seed = s.Seed
	}
	return o
}
