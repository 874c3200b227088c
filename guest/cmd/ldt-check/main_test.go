package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/result"
)

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"nothing", nil, 2},
		{"unknown scenario", []string{"-scenario", "nope", "-tracker", "ldt"}, 2},
		{"unknown tracker", []string{"-scenario", "lazyfree", "-tracker", "nope"}, 2},
		{"checkpoint without pid", []string{"-checkpoint", "-tracker", "ldt"}, 2},
		{"bad flag", []string{"-bogus"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			assert.Equal(t, tt.code, run(tt.args, &out, &errb))
			assert.Empty(t, out.String(), "nothing on stdout for bad usage")
		})
	}
}

func TestList(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 0, run([]string{"-list"}, &out, &errb))
	var l []result.Entry
	require.NoError(t, json.Unmarshal(out.Bytes(), &l))
	assert.GreaterOrEqual(t, len(l), 15)
	for _, e := range l {
		assert.NotEmpty(t, e.Naive, e.Name)
		assert.NotEmpty(t, e.Trackers, e.Name)
	}
}

// TestOneJSONObject: a cell prints exactly one JSON object, also when it
// skips (no /dev/ldt on the host).
func TestOneJSONObject(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"-q", "-scenario", "mprotect", "-tracker", "ldt", "-epochs", "1"}, &out, &errb)
	dec := json.NewDecoder(&out)
	var m map[string]any
	require.NoError(t, dec.Decode(&m))
	assert.False(t, dec.More(), "exactly one object")
	assert.Contains(t, []any{"pass", "skip"}, m["outcome"])
	assert.Equal(t, 0, code)
}
