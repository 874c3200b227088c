package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "-figure must be"},
		{[]string{"-figure", "bogus"}, "-figure must be"},
		{[]string{"-figure", "writeonly", "-trackers", "ldt,bogus"}, `unknown tracker "bogus"`},
		{[]string{"-checkpointer"}, "needs -tracker and -pid"},
		{[]string{"-figure", "collect", "-plan", "huge"}, "-plan must be"},
		{[]string{"-figure", "collect", "stray"}, "unexpected arguments"},
	} {
		var so, se bytes.Buffer
		code := run(tc.args, &so, &se)
		assert.Equal(t, 2, code, "%v", tc.args)
		assert.Contains(t, se.String(), tc.want, "%v", tc.args)
		assert.Empty(t, so.String(), "nothing on stdout for %v", tc.args)
	}
}
