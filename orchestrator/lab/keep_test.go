package lab

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const warnConsole = `[   10.000000] ------------[ cut here ]------------
[   10.000001] WARNING: CPU: 0 PID: 1 at kernel/foo.c:10 foo_fn+0x10/0x20
[   10.000002] Modules linked in:
[   10.000003] CPU: 0 PID: 1 Comm: sh Not tainted 6.12.0 #1
[   10.000004] RIP: 0010:foo_fn+0x10/0x20
[   10.000005] Call Trace:
[   10.000006]  <TASK>
[   10.000007]  bar_fn+0x1/0x2
[   10.000008]  </TASK>
[   10.000009] ---[ end trace 0000000000000000 ]---
`

func TestKeepCrashed(t *testing.T) {
	t.Setenv("LDTLAB_STATE", t.TempDir())
	vmDir := func(t *testing.T, name string, st *State, console string) string {
		dir, err := VMDir(name)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(dir, 0o700))
		if st != nil {
			require.NoError(t, writeState(dir, st))
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, "console.log"), []byte("[    0.000000] Linux version 6.12\n"+console), 0o600))
		return dir
	}
	t.Run("clean guest: nothing kept", func(t *testing.T) {
		dir := vmDir(t, "clean", &State{Name: "clean", Status: StatusStopped}, "")
		kept, n, err := KeepCrashed("clean", dir)
		require.NoError(t, err)
		assert.Empty(t, kept)
		assert.Zero(t, n)
		assert.FileExists(t, filepath.Join(dir, "console.log"))
	})
	t.Run("kernel report: kept", func(t *testing.T) {
		dir := vmDir(t, "warned", &State{Name: "warned", Status: StatusStopped}, warnConsole)
		kept, n, err := KeepCrashed("warned", dir)
		require.NoError(t, err)
		want, err := CrashedDir("warned")
		require.NoError(t, err)
		assert.Equal(t, want, kept)
		assert.Equal(t, 1, n)
		rep, err := os.ReadFile(filepath.Join(kept, "reports.txt"))
		require.NoError(t, err)
		assert.Contains(t, string(rep), "WARNING")
		assert.Contains(t, string(rep), "foo_fn")
		con, err := os.ReadFile(filepath.Join(kept, "console.log"))
		require.NoError(t, err)
		assert.Contains(t, string(con), "cut here")
	})
	t.Run("failed guest, next crash replaces it", func(t *testing.T) {
		dir := vmDir(t, "failed", &State{Name: "failed", Status: StatusFailed, Error: "kernel panic"}, "first\n")
		_, _, err := KeepCrashed("failed", dir)
		require.NoError(t, err)
		dir = vmDir(t, "failed", &State{Name: "failed", Status: StatusFailed, Error: "hung"}, "second\n")
		kept, n, err := KeepCrashed("failed", dir)
		require.NoError(t, err)
		assert.Zero(t, n)
		con, err := os.ReadFile(filepath.Join(kept, "console.log"))
		require.NoError(t, err)
		assert.Contains(t, string(con), "second")
		rep, _ := os.ReadFile(filepath.Join(kept, "reports.txt"))
		assert.Contains(t, string(rep), "failed (hung)")
		st, err := os.Stat(kept)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	})
}
