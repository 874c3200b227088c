package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/vm"
)

// `labctl report` reads regular files only: a FIFO, /dev/zero or a
// device is refused with a clear error instead of read without end.
func TestReportRefusesNonRegularFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.fifo")
	require.NoError(t, syscall.Mkfifo(p, 0o600))
	go func() {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err == nil {
			fmt.Fprintln(f, "[    1.0] hello")
			f.Close()
		}
	}()
	var out bytes.Buffer
	err := reportFiles(&out, []string{p}, false)
	var ie *vm.InfraError
	require.ErrorAs(t, err, &ie, "a FIFO is not a console log")
	err = reportFiles(&out, []string{"/dev/zero"}, false)
	require.ErrorAs(t, err, &ie, "/dev/zero is not a console log")
	_, rerr := readLog("/dev/zero")
	require.Error(t, rerr)
	assert.Contains(t, rerr.Error(), "not a regular file")
}

// A report's title and text come from the guest: terminal escape
// sequences in them are printed escaped.
func TestReportEscapesTerminalSequences(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	log := "------------[ cut here ]------------\n" +
		"WARNING: CPU: 0 PID: 1 at a.c:1 f\x1b]0;pwned\x07+0x1/0x2\n" +
		"Modules linked in:\x1b[2J\x1b[H\n" +
		"---[ end trace 0000000000000000 ]---\n"
	require.NoError(t, os.WriteFile(p, []byte(log), 0o600))
	var out bytes.Buffer
	reportFiles(&out, []string{p}, false)
	require.Contains(t, out.String(), "WARNING")
	assert.NotContains(t, out.String(), "\x1b")
	assert.NotContains(t, out.String(), "\x07")
	assert.Contains(t, out.String(), `\x1b[2J`)
}
