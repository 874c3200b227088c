package scenario

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

	"golang.org/x/sys/unix"

	"ldtlab/guest/kio"
)

func init() {
	register(&Scenario{
		Name:  "shared-pin-elsewhere",
		Paths: "23, 19 (pins)",
		Doc: "a MAP_SHARED memfd of small folios (shmem_enabled=never) tracked in this process, pinned by ANOTHER " +
			"process (its own mapping of the memfd registered as an io_uring fixed buffer): this mm never pinned " +
			"anything (no MMF_HAS_PINNED). Each epoch this process writes some pages with the CPU and the other one " +
			"writes others through its pin (IORING_OP_READ_FIXED); both must be reported.",
		Naive: MissPages,
		Run:   staged(runSharedPinElsewhere),
	})
}

// PinHelperArg as os.Args[1] makes a program that embeds the catalogue
// the helper process of shared-pin-elsewhere (see MaybeChild).
const PinHelperArg = "-scenario-pin-helper"

// pinHelper is another process that maps the same memfd and pins it.
type pinHelper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// startPinHelper starts the helper with shm (the shared memory, n pages)
// and src (the content source) as its fds 3 and 4.
func startPinHelper(shm, src int, n int) (*pinHelper, error) {
	cmd := exec.Command("/proc/self/exe", PinHelperArg, strconv.Itoa(n))
	// Duplicates: an *os.File closes its fd when collected.
	for _, fd := range []int{shm, src} {
		d, err := unix.Dup(fd)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(d), "pin-helper-fd")
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the pin helper: %w", err)
	}
	h := &pinHelper{cmd: cmd, in: in, out: bufio.NewReader(out)}
	if err := h.do("pin"); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *pinHelper) do(format string, args ...any) error {
	if _, err := fmt.Fprintf(h.in, format+"\n", args...); err != nil {
		return fmt.Errorf("pin helper: %w", err)
	}
	l, err := h.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("pin helper: no answer: %w", err)
	}
	if l = strings.TrimSpace(l); l != "ok" {
		return fmt.Errorf("pin helper: %s", l)
	}
	return nil
}

func (h *pinHelper) close() error {
	h.in.Close()
	return h.cmd.Wait()
}

// unpin drops the helper's pin and waits for it to exit.
func (h *pinHelper) unpin() error {
	if err := h.do("unpin"); err != nil {
		h.close()
		return err
	}
	if err := h.close(); err != nil {
		return fmt.Errorf("pin helper: %w", err)
	}
	return nil
}

// pinHelperMain is the helper: it maps fd 3 (n pages) shared, registers
// the mapping as an io_uring fixed buffer on "pin" and answers
// "read PAGE" (READ_FIXED of fd 4's page PAGE into its page PAGE, through
// the pin) and "unpin", one "ok" or error line each.
func pinHelperMain(args []string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "pin helper:", err); return 1 }
	if len(args) != 1 {
		return fail(fmt.Errorf("usage: %s PAGES", PinHelperArg))
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return fail(err)
	}
	mem, err := unix.Mmap(3, 0, n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(err)
	}
	r, err := kio.NewRing(4)
	if err != nil {
		return fail(err)
	}
	defer r.Close()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var err error
		switch {
		case len(f) == 1 && f[0] == "pin":
			err = r.Register([][]byte{mem})
		case len(f) == 1 && f[0] == "unpin":
			err = r.Unregister()
		case len(f) == 2 && f[0] == "read":
			p, perr := strconv.Atoi(f[1])
			if perr != nil || p < 0 || p >= n {
				err = fmt.Errorf("bad page %q", f[1])
				break
			}
			err = r.ReadFixed(4, int64(p)*PageSize, mem[p*PageSize:(p+1)*PageSize], 0)
		default:
			err = fmt.Errorf("unknown command %q", sc.Text())
		}
		if err != nil {
			fmt.Printf("error: %v\n", err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}

// sharedPinSet is the pin scenarios' working set: a memfd of n small
// folios (shmem_enabled=never) mapped MAP_SHARED, every page written, and
// a second memfd as the pin helper's content source (see startPinHelper).
func sharedPinSet(e *Scene, name string, n int) (ws *Workset, fd, src int, err error) {
	if _, err := os.Stat(shmemEnabled); err == nil {
		if err := e.Set(shmemEnabled, "never"); err != nil {
			return nil, -1, -1, err
		}
	}
	if fd, err = memfdOf(name, n); err != nil {
		return nil, -1, -1, err
	}
	if ws, err = e.Workset(n); err != nil {
		unix.Close(fd)
		return nil, -1, -1, err
	}
	if _, err := ws.Map("shmem", File, 0, n, fd); err != nil {
		unix.Close(fd)
		return nil, -1, -1, err // ws.Close closes a mapped segment's fd only
	}
	for id := range n {
		ws.Write(id)
	}
	if src, err = memfdOf(name+"-src", n); err != nil {
		return nil, -1, -1, err
	}
	e.closeAtEnd(func() error { return unix.Close(src) })
	return ws, fd, src, nil
}

func runSharedPinElsewhere(e *Scene) error {
	const n = 32
	ws, fd, src, err := sharedPinSet(e, "ldtlab-shared-pin", n)
	if err != nil {
		return err
	}
	h, err := startPinHelper(fd, src, n)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return Skipf("no io_uring: %v", err)
		}
		return err
	}
	helperDone := false
	e.closeAtEnd(func() error {
		if !helperDone {
			h.close()
		}
		return nil
	})
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	through := 0
	for range e.Epochs {
		ids := Pick(e.Rand, 0, n, n/4)
		for i, id := range ids {
			if i%2 == 0 {
				ws.Write(id)
				continue
			}
			if err := writeThroughPin(ws, h, src, []int{id}); err != nil {
				return err
			}
			through++
		}
		// Pinned pages may be reported at every collection while pinned.
		ws.Hint(0, n, "pinned-elsewhere")
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	helperDone = true
	if err := h.unpin(); err != nil {
		return err
	}
	e.Note("the other process wrote %d pages through its pin", through)
	ws.Hint(0, n, "pinned-once-more-after-unpin")
	return e.Quiet(ws, t)
}

func init() {
	register(&Scenario{
		Name:  "shared-pin-between-collections",
		Paths: "23 (pins through another mm, no collection while pinned)",
		Doc: "shared-pin-elsewhere's memfd, but the other process's pin is one no collection overlaps, or that " +
			"overlaps one while its writes come after: each epoch (a) a new process pins pages, writes them " +
			"through the pin and unpins, all between two collections; (b) the same after this process zapped " +
			"its entries of the pages (MADV_DONTNEED: only the page cache holds them); (c) a pin held across " +
			"the collection is written through and dropped before the next. Nothing in this mm's entries sees " +
			"any of these writes: the pin itself must be recorded.",
		Naive: MissPages,
		Run:   staged(runSharedPinBetween),
	})
}

// pinWrite has a fresh helper pin the whole memfd, write ids through the
// pin and unpin; src is the helper's content source (see startPinHelper).
func pinWrite(ws *Workset, fd, src, n int, ids []int) error {
	h, err := startPinHelper(fd, src, n)
	if err != nil {
		return err
	}
	if err := writeThroughPin(ws, h, src, ids); err != nil {
		h.close()
		return err
	}
	return h.unpin()
}

func writeThroughPin(ws *Workset, h *pinHelper, src int, ids []int) error {
	for _, id := range ids {
		err := ws.WriteWith(id, func(_ uintptr, data []byte) error {
			if _, err := unix.Pwrite(src, data, int64(id)*PageSize); err != nil {
				return err
			}
			return h.do("read %d", id)
		})
		if err != nil {
			return fmt.Errorf("write page %d through the other process's pin: %w", id, err)
		}
	}
	return nil
}

func runSharedPinBetween(e *Scene) error {
	const n = 48
	ws, fd, src, err := sharedPinSet(e, "ldtlab-shared-pin-between", n)
	if err != nil {
		return err
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	var held *pinHelper // (c): pinned across the last collection
	e.closeAtEnd(func() error {
		if held != nil {
			held.close()
		}
		return nil
	})
	var between, zapped, straddled int
	for range e.Epochs {
		ids := Pick(e.Rand, 0, n, n/3)
		third := len(ids) / 3
		a, b, c := ids[:third], ids[third:2*third], ids[2*third:]
		if held != nil {
			if err := writeThroughPin(ws, held, src, c); err != nil {
				return err
			}
			h := held
			held = nil
			if err := h.unpin(); err != nil {
				return err
			}
			straddled += len(c)
		}
		if err := pinWrite(ws, fd, src, n, a); err != nil {
			if errors.Is(err, unix.ENOSYS) {
				return Skipf("no io_uring: %v", err)
			}
			return err
		}
		between += len(a)
		for _, id := range b {
			if err := unix.Madvise(ws.Page(id), unix.MADV_DONTNEED); err != nil {
				return fmt.Errorf("MADV_DONTNEED page %d: %w", id, err)
			}
		}
		if err := pinWrite(ws, fd, src, n, b); err != nil {
			return err
		}
		zapped += len(b)
		if held, err = startPinHelper(fd, src, n); err != nil {
			return err
		}
		// Pinned pages may be reported at every collection while pinned.
		ws.Hint(0, n, "pinned-elsewhere")
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	if held != nil {
		h := held
		held = nil
		if err := h.unpin(); err != nil {
			return err
		}
	}
	e.Note("written through pins: %d between collections, %d after a zap, %d after a collection saw the pin", between, zapped, straddled)
	ws.Hint(0, n, "pinned-once-more-after-unpin")
	return e.Quiet(ws, t)
}
