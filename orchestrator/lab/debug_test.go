package lab

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGDBCommand(t *testing.T) {
	for _, c := range []struct {
		name                         string
		vmlinux, scripts, sock, core string
		want                         string
	}{
		{"live, no debug info", "/k/vmlinux", "", "/s/vms/x/gdb.sock", "",
			"gdb -q /k/vmlinux -ex 'target remote /s/vms/x/gdb.sock'"},
		{"live, with the lx- scripts", "/k/vmlinux", "/k/vmlinux-gdb.py", "/s/vms/x/gdb.sock", "",
			"gdb -q -iex 'add-auto-load-safe-path /k' /k/vmlinux -ex 'target remote /s/vms/x/gdb.sock'"},
		{"a vmcore", "/k/vmlinux", "/k/vmlinux-gdb.py", "", "/tmp/x.vmcore",
			"gdb -q -iex 'add-auto-load-safe-path /k' /k/vmlinux /tmp/x.vmcore"},
		{"paths that need quoting", "/my k/vmlinux", "", "", "/tmp/a b.vmcore",
			"gdb -q '/my k/vmlinux' '/tmp/a b.vmcore'"},
	} {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, c.want, GDBCommand(c.vmlinux, c.scripts, c.sock, c.core))
		})
	}
	assert.Empty(t, (&State{Vmlinux: "/k/vmlinux"}).GDBCommand(), "no gdbstub, no command")
}

func TestDumpRefusals(t *testing.T) {
	vm := t.TempDir()
	_, err := Dump(context.Background(), vm, filepath.Join(t.TempDir(), "x.vmcore"), DumpOptions{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--backend qemu", "a VM without the monitor socket (libvirt)")

	require.NoError(t, os.WriteFile(filepath.Join(vm, "monitor.sock"), nil, 0o600))
	_, err = Dump(context.Background(), vm, t.TempDir(), DumpOptions{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is a directory")
}

// TestUnnamedThenPublished: the vmcore has no name until publish, which
// replaces an existing file whole.
func TestUnnamedThenPublished(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "x.vmcore")
	require.NoError(t, os.WriteFile(dst, []byte("old"), 0o644))
	f, named, err := createUnnamed(dir)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.WriteString("new core")
	require.NoError(t, err)
	ents, _ := os.ReadDir(dir)
	require.Len(t, ents, 1+map[bool]int{true: 0, false: 1}[named == ""], "nothing new is visible while it is written")
	require.NoError(t, publish(f, named, dst))
	b, err := os.ReadFile(dst)
	require.NoError(t, err)
	assert.Equal(t, "new core", string(b))
	fi, err := os.Stat(dst)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	ents, _ = os.ReadDir(dir)
	assert.Len(t, ents, 1, "no temporary name left")
}
