package cell

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestLastJSON(t *testing.T) {
	out := []byte("progress\n{\"a\":1}\nmore\n{\"scenario\":\"x\"}\n")
	assert.Equal(t, `{"scenario":"x"}`, string(LastJSON(out)))
	assert.Equal(t, "no json", string(LastJSON([]byte("no json"))))
}

func TestAllows(t *testing.T) {
	assert.True(t, Scenario{Trackers: []string{"ldt", "naive"}}.Allows("mutant-all"), "mutants run where ldt runs")
	assert.False(t, Scenario{Trackers: []string{"softdirty"}}.Allows("mutant-all"))
}
