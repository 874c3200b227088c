package tests

// Post-mortem debugging in the developer VM (issue 24 item 1): a vmcore
// from `labctl dump`, a guest that panics held for gdb under `up --gdb`,
// and the kernel's gdb scripts of a --debuginfo kernel.

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/kernel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/qmp"
)

// vmState reads the state.json of a VM of c's state directory.
func vmState(t *testing.T, c cli, name string) *lab.State {
	t.Helper()
	st, err := lab.ReadState(filepath.Join(c.state, "vms", name))
	require.NoError(t, err)
	return st
}

// qemuStatus asks the VM's QEMU, through the monitor socket labctl dump
// uses, whether its CPUs run ("running", "paused", ...).
func qemuStatus(t *testing.T, st *lab.State) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := qmp.DialConn(ctx, st.Monitor)
	require.NoError(t, err)
	defer c.Close()
	raw, err := c.Execute(ctx, "query-status", nil)
	require.NoError(t, err)
	var s struct {
		Status string `json:"status"`
	}
	require.NoError(t, json.Unmarshal(raw, &s))
	return s.Status
}

// symbol is a symbol's address in a kernel's System.map.
func symbol(t *testing.T, vmlinux, name string) uint64 {
	t.Helper()
	f, err := os.Open(filepath.Join(filepath.Dir(vmlinux), "System.map"))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 3 && fs[2] == name {
			v, err := strconv.ParseUint(fs[0], 16, 64)
			require.NoError(t, err)
			return v
		}
	}
	t.Fatalf("%s not in System.map", name)
	return 0
}

// coreNotes counts the ELF notes of a core file by owner and type.
func coreNotes(t *testing.T, f *elf.File) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(p.Open())
		require.NoError(t, err)
		for len(b) >= 12 {
			namesz, descsz, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			off := 12 + int((namesz+3)&^3)
			end := off + int((descsz+3)&^3)
			require.LessOrEqual(t, end, len(b), "note overruns its segment")
			owner := strings.TrimRight(string(b[12:12+namesz]), "\x00")
			n[owner+"/"+strconv.Itoa(int(typ))]++
			b = b[end:]
		}
	}
	return n
}

// physCovered is how many bytes of guest-physical memory the core's loads
// hold (with paging, a page mapped twice is counted once).
func physCovered(f *elf.File) uint64 {
	type span struct{ a, b uint64 }
	var s []span
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Filesz > 0 {
			s = append(s, span{p.Paddr, p.Paddr + p.Filesz})
		}
	}
	sort.Slice(s, func(i, j int) bool { return s[i].a < s[j].a })
	var total, end uint64
	for _, x := range s {
		if x.b <= end {
			continue
		}
		if x.a < end {
			x.a = end
		}
		total += x.b - x.a
		end = x.b
	}
	return total
}

// readVirt reads n bytes at a kernel virtual address from a core's loads.
func readVirt(f *elf.File, addr uint64, n int) []byte {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && addr >= p.Vaddr && addr+uint64(n) <= p.Vaddr+p.Filesz {
			b := make([]byte, n)
			if _, err := p.ReadAt(b, int64(addr-p.Vaddr)); err == nil {
				return b
			}
		}
	}
	return nil
}

// fileContains reports whether the file holds needle, reading it in chunks.
func fileContains(t *testing.T, path string, needle []byte) bool {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, 8<<20)
	var carry []byte
	for {
		n, err := f.Read(buf)
		chunk := append(carry, buf[:n]...)
		if bytes.Contains(chunk, needle) {
			return true
		}
		if len(chunk) >= len(needle) {
			carry = append([]byte(nil), chunk[len(chunk)-len(needle)+1:]...)
		}
		if err == io.EOF {
			return false
		}
		require.NoError(t, err)
	}
}

// TestDevVMDump: `labctl dump` writes an ELF core of the live guest
// (one register note per vCPU, loads covering its memory, the kernel's
// banner at linux_banner's virtual address, a string the guest holds in
// memory, readable by gdb), owner-only; an interrupted dump leaves no
// file, and the guest goes on.
func TestDevVMDump(t *testing.T) {
	const memMiB = 384
	c, name, up := devVM(t, "dump", "--mem", strconv.Itoa(memMiB), "--cpus", "2")
	assert.Contains(t, up, "labctl dump "+name)
	st := vmState(t, c, name)
	banner := c.ok("run", name, "--", "cat /proc/version")
	// A string that exists only in the guest's memory (tmpfs page cache).
	marker := "ldtlab-vmcore-marker-" + strconv.Itoa(os.Getpid())
	c.ok("run", name, "--", "printf '%s%s' "+marker[:10]+" "+marker[10:]+" > /dev/shm/marker")

	out := t.TempDir()
	core := filepath.Join(out, "x.vmcore")
	so, se, code := c.run("dump", name, core)
	require.Equal(t, 0, code, "%s%s", so, se)
	assert.Regexp(t, `\[dump\] `+regexp.QuoteMeta(name)+`: \d+/\d+ MiB \(100%\)`, se, "progress")
	assert.Contains(t, so, "wrote "+core)
	assert.Contains(t, so, st.Vmlinux+" "+core, "the gdb command line")
	fi, err := os.Stat(core)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "guest memory is the user's alone")
	ents, _ := os.ReadDir(out)
	assert.Len(t, ents, 1, "nothing but the vmcore")

	f, err := elf.Open(core)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, elf.ET_CORE, f.Type)
	assert.Equal(t, elf.EM_X86_64, f.Machine)
	notes := coreNotes(t, f)
	assert.Equal(t, 2, notes["CORE/"+strconv.Itoa(int(elf.NT_PRSTATUS))], "one NT_PRSTATUS per vCPU: %v", notes)
	covered := physCovered(f)
	assert.Greater(t, covered, uint64(memMiB)<<20*9/10, "the loads hold the guest's memory")
	assert.LessOrEqual(t, covered, uint64(memMiB+16)<<20)
	b := readVirt(f, symbol(t, st.Vmlinux, "linux_banner"), len(banner))
	assert.Equal(t, banner, string(b), "linux_banner at its virtual address")
	// The host name the guest's init set (vmlinux says "(none)"): the
	// nodename of init_uts_ns, after the 65-byte sysname.
	nodename := symbol(t, st.Vmlinux, "init_uts_ns") + 65
	b = readVirt(f, nodename, len(name)+1)
	assert.Equal(t, name+"\x00", string(b), "the live utsname at its virtual address")
	assert.True(t, fileContains(t, core, []byte(marker)), "the guest's memory, not just the kernel image")
	if _, err := exec.LookPath("gdb"); err == nil {
		// Not linux_banner: gdb would read that from vmlinux's rodata.
		g, err := exec.Command("gdb", "-q", "-batch", "-nx", st.Vmlinux, core, "-ex", "x/s (char *)&init_uts_ns + 65").CombinedOutput()
		require.NoError(t, err, "%s", g)
		assert.Contains(t, string(g), `"`+name+`"`, "gdb reads the guest's memory from the vmcore")
	} else {
		t.Log("gdb not installed: the gdb check of the vmcore did not run (labctl setup installs it)")
	}

	// Interrupted while it runs: no file, no leftover. On a quiet host
	// QEMU dumps 384 MiB in well under the 1 s between progress lines,
	// so waiting for one would interrupt a finished dump (seen): the
	// interrupt goes 100 ms after the start, and a dump that still
	// finished first must then be whole.
	partial := filepath.Join(out, "y.vmcore")
	cmd := exec.Command(labctl, "dump", name, partial)
	cmd.Env = append(os.Environ(), "LDTLAB_STATE="+c.state, "LDTLAB_REPO="+repo)
	var seen bytes.Buffer
	cmd.Stderr = &seen
	require.NoError(t, cmd.Start())
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err = cmd.Wait()
	assert.Error(t, err, "an interrupted dump fails: %s", seen.String())
	ents, _ = os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Contains(seen.String(), "(100%)") {
		t.Logf("the dump finished before the interrupt landed: %s", seen.String())
		head := make([]byte, 4)
		f, oerr := os.Open(partial)
		if assert.NoError(t, oerr, "a finished dump is named") {
			_, rerr := io.ReadFull(f, head)
			f.Close()
			assert.NoError(t, rerr)
			assert.Equal(t, "\x7fELF", string(head), "a finished dump is an ELF core")
		}
	} else {
		assert.Contains(t, seen.String(), "no file written")
		assert.Equal(t, []string{"x.vmcore"}, names, "no partial file")
	}

	// The guest resumes when QEMU's (abandoned) dump ends.
	assert.Equal(t, "ok\n", c.ok("run", name, "--", "echo ok"))
}

// TestDevVMPanicHeld: under `up --gdb` a guest that panics is held, its
// QEMU alive and paused; ls says so with the gdb command; gdb attaches
// and finds the panic; down ends it and leaves nothing in the state
// directory (issue 24 items 1 and 9).
func TestDevVMPanicHeld(t *testing.T) {
	c, name, up := devVM(t, "held", "--gdb")
	assert.Contains(t, up, "a panic holds the guest paused for gdb")
	so, se, code := c.run("run", name, "--", "echo panic > /sys/kernel/debug/labtest/trigger")
	assert.Equal(t, 1, code, "%s%s", so, se)
	assert.Contains(t, se, "panicked during the command")
	assert.Contains(t, se, "held for gdb")

	st := vmState(t, c, name)
	require.True(t, st.Held, "state: %+v", st)
	require.NotZero(t, st.QEMUPID)
	require.NoError(t, syscall.Kill(st.QEMUPID, 0), "QEMU is still alive")
	assert.Equal(t, "paused", qemuStatus(t, st))

	ls := c.ok("ls")
	assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(name)+`\s+held\s`, ls)
	assert.Contains(t, ls, "held for gdb (paused where it panicked")
	assert.Contains(t, ls, "labtest: deliberate panic")
	assert.Contains(t, ls, "target remote "+st.GDB)

	// A vmcore of the held guest (physical memory: quick), which stays
	// paused after.
	core := filepath.Join(t.TempDir(), "held.vmcore")
	c.ok("dump", "--physical", name, core)
	f, err := elf.Open(core)
	require.NoError(t, err)
	assert.Equal(t, 2, coreNotes(t, f)["CORE/"+strconv.Itoa(int(elf.NT_PRSTATUS))])
	f.Close()
	os.Remove(core)
	assert.Equal(t, "paused", qemuStatus(t, st), "still held after the dump")

	// Commands say why they cannot run.
	_, se, code = c.run("run", name, "--", "true")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, se, "held for gdb")

	if _, err := exec.LookPath("gdb"); err == nil {
		g, err := exec.Command("gdb", "-q", "-batch", "-nx", st.Vmlinux, "-ex", "target remote "+st.GDB,
			"-ex", "info threads", "-ex", "thread apply all bt 6").CombinedOutput()
		require.NoError(t, err, "%s", g)
		assert.Contains(t, string(g), "CPU#1", "both vCPUs")
		assert.Regexp(t, `in v?panic \(`, string(g), "a vCPU is in panic(): %s", g)
	} else {
		t.Log("gdb not installed: the attach check did not run (labctl setup installs it)")
	}

	c.ok("down", name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	assert.True(t, waitGone(ctx, name))
	ents, err := os.ReadDir(filepath.Join(c.state, "vms"))
	require.NoError(t, err)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	assert.Empty(t, left, "down leaves nothing of the VM in the state directory (not even .%s.lock)", name)
}

// TestDevVMGDBScripts: with a --debuginfo kernel, the gdb command `up`
// prints loads the kernel's lx- scripts: lx-dmesg shows the panic, lx-ps
// the task that triggered it. Needs `labctl build --debuginfo` (a full
// build, not part of the suite's kernels).
func TestDevVMGDBScripts(t *testing.T) {
	if _, err := exec.LookPath("gdb"); err != nil {
		t.Skip("gdb not installed (labctl setup installs it)")
	}
	if _, ok, err := kernel.Find(kernel.Options{Repo: repo, Config: "debug", DebugInfo: true}); err != nil || !ok {
		t.Skipf("no cached debug --debuginfo kernel (%v): run `labctl build --debuginfo` first", err)
	}
	c, name, up := devVM(t, "gdbs", "--gdb", "--debuginfo")
	st := vmState(t, c, name)
	require.NotEmpty(t, st.GDBScripts)
	m := regexp.MustCompile(`(?m)^\s+(gdb -q .*target remote .*)$`).FindStringSubmatch(up)
	require.NotNil(t, m, "up prints the gdb command:\n%s", up)
	assert.Contains(t, m[1], "add-auto-load-safe-path "+filepath.Dir(st.GDBScripts))

	_, _, code := c.run("run", name, "--", "echo panic > /sys/kernel/debug/labtest/trigger")
	require.Equal(t, 1, code)
	require.True(t, vmState(t, c, name).Held)
	// The printed command, as a user would run it, plus the commands.
	g, err := exec.Command("sh", "-c", m[1]+" -batch -ex lx-dmesg -ex lx-ps -ex 'p init_task.comm'").CombinedOutput()
	require.NoError(t, err, "%s", g)
	out := string(g)
	assert.Contains(t, out, "Kernel panic - not syncing: labtest: deliberate panic", "lx-dmesg")
	assert.Regexp(t, `(?m)^0x[0-9a-f]+\s+1\s+\S+`, out, "lx-ps lists pid 1")
	assert.Contains(t, out, `"swapper/0`, "gdb knows struct task_struct")
	assert.NotContains(t, out, "No struct type named")
}
