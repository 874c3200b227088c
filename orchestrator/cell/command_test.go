package cell

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"ldtlab/orchestrator/stress"
)

func TestSpecCommandAndRepro(t *testing.T) {
	ksm := &Scenario{Name: "ksm"}
	for _, c := range []struct {
		name           string
		spec           Spec
		command, repro string
	}{
		{"scenario", Spec{Kind: KindScenario, Scenario: ksm, Tracker: "ldt", Seed: 4},
			"ldt-check -q -scenario ksm -tracker ldt -seed 4",
			"labctl check --scenario ksm --tracker ldt --seed 4"},
		{"scenario with epochs, hostile name", Spec{Kind: KindScenario, Scenario: &Scenario{Name: "x; rm -rf /"}, Tracker: "naive", Seed: 1, Epochs: 3},
			"ldt-check -q -scenario 'x; rm -rf /' -tracker naive -seed 1 -epochs 3",
			"labctl check --scenario 'x; rm -rf /' --tracker naive --seed 1 --epochs 3"},
		{"compare", Spec{Kind: KindCompare, Scenario: ksm, Seed: 2},
			"ldt-check -q -compare -scenario ksm -seed 2", ""},
		{"checkpoint synthetic", Spec{Kind: KindCheckpoint, Target: "synthetic", Tracker: "naive", Seed: 5},
			"ldt-check -q -checkpoint-synthetic -tracker naive -rounds 5 -mb 48 -seed 5", ""},
		{"checkpoint redis", Spec{Kind: KindCheckpoint, Target: "redis", Tracker: "ldt"},
			"ldt-check -q -checkpoint -tracker ldt -pid $PID -rounds 5 -interval 1s", ""},
		{"stress: the cell's seed", Spec{Kind: KindStress, Tracker: "ldt", Seed: 9, THP: true, Stress: stress.Options{Duration: 8 * time.Second, Pages: 1000, Agitators: []string{"ksm", "fork"}}},
			"ldt-stress -tracker ldt -pages 1000 -duration 8s -seed 9 -thp=true -agitators ksm,fork",
			"labctl stress --tracker ldt --seed 9 --for 8s --pages 1000 --thp=true --agitators ksm,fork"},
		{"migrate", Spec{Kind: KindMigrate, Tracker: "softdirty", Migrate: MigrateOptions{Rounds: 3, Keys: 8000, Pressure: true}},
			"", "labctl migrate --tracker softdirty --rounds 3 --keys 8000 --pressure"},
	} {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, c.command, c.spec.Command())
			assert.Equal(t, c.repro, c.spec.Repro())
		})
	}
}
