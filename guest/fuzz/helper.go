package fuzz

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// HelperArg as os.Args[1] makes ldt-fuzz the pinning helper: another
// process that maps a region's shared object (fd 3), registers it as its
// own io_uring fixed buffer (a long-term pin taken in another mm: the
// tracked mm's MMF_HAS_PINNED stays clear) and reads the data file into
// it on command. Programs embedding the fuzzer call MaybeHelper first.
const HelperArg = "-fuzz-helper"

// xhelper is the parent's handle on a running helper.
type xhelper struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	region int
}

func (e *executor) xpin(r *region) error {
	if r.fd < 0 {
		return nil // no object another process could map (anonymous memory)
	}
	if e.helper != nil {
		e.helper.stop()
		e.helper = nil
	}
	dup, err := unix.Dup(r.fd)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), "region")
	defer f.Close()
	cmd := exec.Command(e.cfg.Self, HelperArg, e.cfg.DataFile, strconv.Itoa(r.n))
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the pinning helper: %w", err)
	}
	h := &xhelper{cmd: cmd, in: in, out: bufio.NewReader(outp), region: r.idx}
	line, err := h.out.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ok") {
		h.stop()
		e.failed(OpXPin, fmt.Errorf("helper: %q %v", strings.TrimSpace(line), err))
		return nil
	}
	e.helper = h
	e.done(OpXPin)
	return nil
}

func (e *executor) xwrite(i int, o Op) error {
	h := e.helper
	if h == nil {
		return nil
	}
	r := e.regions[h.region]
	p, n := r.pages(o.P, o.N)
	if n == 0 {
		return nil
	}
	off := o.Off % (dataPages - n + 1)
	direct := 0
	if o.Arg == "direct" {
		direct = 1
	}
	fmt.Fprintf(h.in, "w %d %d %d %d\n", p, n, off, direct)
	line, err := h.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("pinning helper: %w", err)
	}
	got, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || got < 0 {
		e.failed(OpXWrite, fmt.Errorf("helper: %s", strings.TrimSpace(line)))
		return nil
	}
	e.pinWrite(i, r, p, (got+pg-1)/pg, OpXWrite)
	e.done(OpXWrite)
	return nil
}

func (h *xhelper) stop() {
	h.in.Close()
	done := make(chan struct{})
	go func() { h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-done
	}
}

// MaybeHelper runs the helper and exits when this process is one.
func MaybeHelper() {
	if len(os.Args) < 4 || os.Args[1] != HelperArg {
		return
	}
	if err := helperMain(os.Args[2], os.Args[3]); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helperMain(dataFile, pagesArg string) error {
	unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	n, err := strconv.Atoi(pagesArg)
	if err != nil || n <= 0 {
		return fmt.Errorf("bad page count %q", pagesArg)
	}
	mem, err := unix.Mmap(3, 0, n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap the region's object: %w", err)
	}
	fd, err := unix.Open(dataFile, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	dio, err := unix.Open(dataFile, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	u, err := newUring(8, 64)
	if err != nil {
		return err
	}
	defer u.close()
	base := uintptrOf(mem)
	if err := u.register(base, n*pg); err != nil {
		return err
	}
	fmt.Println("ok")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 5 || f[0] != "w" {
			fmt.Println("-1 bad command")
			continue
		}
		p, _ := strconv.Atoi(f[1])
		k, _ := strconv.Atoi(f[2])
		off, _ := strconv.Atoi(f[3])
		src := fd
		if f[4] == "1" {
			src = dio
		}
		if p < 0 || k <= 0 || p+k > n {
			fmt.Println("-1 out of range")
			continue
		}
		got, err := u.readFixed(src, base+uintptr(p)*pg, k*pg, int64(off)*pg)
		if err != nil {
			fmt.Println("-1", err)
			continue
		}
		fmt.Println(got)
	}
	return u.unregister()
}
