package tracker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// childEnv makes the test binary act as a tracked target process: it maps
// childPages pages, prints their address and writes the pages named on
// stdin ("w P"), answering "ok".
const (
	childEnv   = "LDTLAB_TRACKER_TEST_CHILD"
	childPages = 32
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

func childMain() int {
	all, err := unix.Mmap(-1, 0, (childPages+2)*PageSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mem := all[PageSize : (childPages+1)*PageSize]
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	fmt.Printf("addr %#x\n", uintptr(unsafe.Pointer(&mem[0])))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		p, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "w "))
		if err != nil || p < 0 || p >= childPages {
			fmt.Println("bad")
			continue
		}
		mem[p*PageSize]++
		fmt.Println("ok")
	}
	return 0
}

type child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	base uintptr
}

func startChild(t *testing.T) *child {
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	line, err := c.out.ReadString('\n')
	require.NoError(t, err)
	a, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	require.True(t, ok, line)
	v, err := strconv.ParseUint(a, 0, 64)
	require.NoError(t, err)
	c.base = uintptr(v)
	return c
}

func (c *child) write(t *testing.T, pages ...int) {
	for _, p := range pages {
		_, err := fmt.Fprintf(c.in, "w %d\n", p)
		require.NoError(t, err)
		line, err := c.out.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "ok\n", line)
	}
}

// TestTrackersOtherProcess tracks a child by pid, as the checkpoint oracle
// does, and checks that a dead target gives an error, not an empty result.
func TestTrackersOtherProcess(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			c := startChild(t)
			end := c.base + childPages*PageSize
			tr, err := Open(name, c.cmd.Process.Pid, c.base, end)
			if name == "pagemap-scan" {
				require.ErrorIs(t, err, ErrUnsupported)
				return
			}
			if errors.Is(err, ErrUnsupported) {
				t.Skipf("%s unavailable here: %v", name, err)
			}
			require.NoError(t, err)
			defer tr.Close()
			r := &region{base: c.base, n: childPages}

			c.write(t, 0, 1, 5, 31)
			expect(t, tr, r, c.base, end, true, r.set(0, 1, 5, 31), "child's writes")
			expect(t, tr, r, c.base, end, false, Set{}, "after clear")
			c.write(t, 5, 6)
			expect(t, tr, r, c.base, end, true, r.set(5, 6), "second epoch")

			c.cmd.Process.Kill()
			c.cmd.Wait()
			_, err = tr.Collect(c.base, end, false)
			assert.ErrorIs(t, err, unix.ESRCH, "collect after the target died")
		})
	}
}
