package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// BasePath is the PATH of every command.
const BasePath = "/usr/sbin:/usr/bin:/sbin:/bin"

// ptyDrain bounds how long output is still read from a pty after the shell
// exited: background jobs may hold the tty open forever, which must not keep
// the session from finishing.
const ptyDrain = 500 * time.Millisecond

var errAborted = errors.New("client closed the session")

// Payloads of the RFC 4254 session requests.
type (
	envReq struct{ Name, Value string }
	ptyReq struct {
		Term                    string
		Columns, Rows, Wpx, Hpx uint32
		Modes                   string
	}
	winchReq      struct{ Columns, Rows, Wpx, Hpx uint32 }
	execReq       struct{ Command string }
	subsysReq     struct{ Name string }
	signalReq     struct{ Signal string }
	exitStatusMsg struct{ Status uint32 }
	exitSignalMsg struct {
		Signal     string
		CoreDumped bool
		Error      string
		Lang       string
	}
)

// session is one SSH "session" channel: at most one command, shell or sftp
// server, plus the requests that shape it.
type session struct {
	srv *Server
	ch  ssh.Channel

	mu       sync.Mutex
	env      []string
	pty      *ptyReq
	ptmx     *os.File // set while a pty command runs
	pgid     int      // process group of the running command, 0 if none
	started  bool     // shell, exec or subsystem accepted
	finished bool     // exit status sent: leftovers are not killed
	aborted  chan struct{}
	abortOne sync.Once
}

func (s *Server) handleSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	ss := &session{srv: s, ch: ch, aborted: make(chan struct{})}
	for req := range reqs {
		ok, then := ss.request(req)
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
		// Started only after the reply, so that the reply always precedes
		// the exit status on the wire.
		if then != nil {
			go then()
		}
	}
	// The request channel closes when the client closed the channel or the
	// connection dropped: either way, whatever still runs must die.
	ss.abort()
}

func (ss *session) request(req *ssh.Request) (bool, func()) {
	switch req.Type {
	case "env":
		var m envReq
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false, nil
		}
		ss.mu.Lock()
		ss.env = append(ss.env, m.Name+"="+m.Value)
		ss.mu.Unlock()
		return true, nil
	case "pty-req":
		var m ptyReq
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false, nil
		}
		ss.mu.Lock()
		defer ss.mu.Unlock()
		if ss.started {
			return false, nil
		}
		ss.pty = &m
		return true, nil
	case "window-change":
		var m winchReq
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false, nil
		}
		return ss.resize(m), nil
	case "shell":
		return ss.begin(func() { ss.runShell("", true) })
	case "exec":
		var m execReq
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false, nil
		}
		return ss.begin(func() { ss.runShell(m.Command, false) })
	case "subsystem":
		var m subsysReq
		if ssh.Unmarshal(req.Payload, &m) != nil || m.Name != "sftp" {
			return false, nil
		}
		return ss.begin(ss.runSFTP)
	case "signal":
		var m signalReq
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false, nil
		}
		return ss.signal(m.Signal), nil
	}
	return false, nil
}

// begin accepts the session's one shell/exec/subsystem request.
func (ss *session) begin(run func()) (bool, func()) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.started {
		return false, nil
	}
	ss.started = true
	return true, run
}

func (ss *session) resize(m winchReq) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pty == nil {
		return false
	}
	ss.pty.Columns, ss.pty.Rows, ss.pty.Wpx, ss.pty.Hpx = m.Columns, m.Rows, m.Wpx, m.Hpx
	if ss.ptmx != nil {
		return setWinsize(ss.ptmx, ss.pty) == nil
	}
	return true
}

func (ss *session) signal(name string) bool {
	sig := unix.SignalNum("SIG" + name)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if sig == 0 || ss.pgid == 0 || ss.finished {
		return false
	}
	return syscall.Kill(-ss.pgid, sig) == nil
}

// abort runs when the client is gone: kill the process group unless the
// command already finished normally (then leftovers such as nohup'ed jobs
// are the user's business, as with sshd).
func (ss *session) abort() {
	ss.abortOne.Do(func() { close(ss.aborted) })
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pgid != 0 && !ss.finished {
		_ = syscall.Kill(-ss.pgid, syscall.SIGKILL)
	}
	if !ss.started {
		ss.ch.Close()
	}
}

// start starts cmd unless the client already left; the lock makes the
// start and the recording of the process group atomic with respect to abort.
func (ss *session) start(cmd *exec.Cmd) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	select {
	case <-ss.aborted:
		return errAborted
	default:
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	ss.pgid = cmd.Process.Pid
	// The agent protects itself from the OOM killer (serve mode); what it
	// runs must stay killable like any process, or the OOM killer would
	// have nothing to take but the kernel's own patience.
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", cmd.Process.Pid), []byte("0"), 0)
	return nil
}

func (ss *session) environ(p *ptyReq, extra []string) []string {
	cfg := ss.srv.cfg
	env := []string{"PATH=" + BasePath, "HOME=" + cfg.Home, "SHELL=" + cfg.Shell}
	if p != nil && p.Term != "" {
		env = append(env, "TERM="+p.Term)
	}
	// exec.Cmd keeps the last of duplicate names, so the client may override.
	return append(env, extra...)
}

func workDir(home string) string {
	if fi, err := os.Stat(home); err == nil && fi.IsDir() {
		return home
	}
	return "/"
}

// runShell runs Shell -c command, or a login shell when login is set.
func (ss *session) runShell(command string, login bool) {
	cfg := ss.srv.cfg
	var cmd *exec.Cmd
	if login {
		cmd = exec.Command(cfg.Shell)
		// A leading '-' in argv[0] is the portable "login shell" marker.
		cmd.Args[0] = "-" + filepath.Base(cfg.Shell)
	} else {
		cmd = exec.Command(cfg.Shell, "-c", command)
	}
	ss.mu.Lock()
	var p *ptyReq
	if ss.pty != nil {
		cp := *ss.pty
		p = &cp
	}
	cmd.Env = ss.environ(p, slices.Clone(ss.env))
	ss.mu.Unlock()
	cmd.Dir = workDir(cfg.Home)

	var st *os.ProcessState
	var err error
	if p != nil {
		st, err = ss.runPty(cmd)
	} else {
		st, err = ss.runPipes(cmd)
	}
	if err != nil {
		if !errors.Is(err, errAborted) {
			fmt.Fprintf(ss.ch.Stderr(), "ldtlab-agent: %v\n", err)
		}
		ss.finish(exitCodeMsg(127))
		return
	}
	ss.finish(exitMsg(st))
}

func (ss *session) runPipes(cmd *exec.Cmd) (*os.ProcessState, error) {
	var files [6]*os.File // inR, inW, outR, outW, errR, errW
	for i := 0; i < 6; i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range files[:i] {
				f.Close()
			}
			return nil, err
		}
		files[i], files[i+1] = r, w
	}
	inR, inW, outR, outW, errR, errW := files[0], files[1], files[2], files[3], files[4], files[5]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	// Its own process group, so that cancellation reaches grandchildren.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err := ss.start(cmd)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, err
	}

	go func() {
		// Client EOF closes the child's stdin.
		_, _ = io.Copy(inW, ss.ch)
		inW.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(ss.ch, outR) }()
	go func() { defer wg.Done(); _, _ = io.Copy(ss.ch.Stderr(), errR) }()
	_ = cmd.Wait()

	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ss.aborted:
		// Nobody will read the rest; do not wait for stray holders of the
		// pipes either.
	}
	outR.Close()
	errR.Close()
	<-drained
	return cmd.ProcessState, nil
}

func (ss *session) runPty(cmd *exec.Cmd) (*os.ProcessState, error) {
	ptmx, tty, err := openPty()
	if err != nil {
		return nil, fmt.Errorf("allocating pty: %w", err)
	}
	defer ptmx.Close()
	ss.mu.Lock()
	_ = setWinsize(ptmx, ss.pty)
	ss.ptmx = ptmx
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		ss.ptmx = nil
		ss.mu.Unlock()
	}()

	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// New session with the pty as controlling terminal: job control and
	// ^C work, and the session id is also the group to kill.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = ss.start(cmd)
	tty.Close()
	if err != nil {
		return nil, err
	}

	go func() { _, _ = io.Copy(ptmx, ss.ch) }()
	outDone := make(chan struct{})
	go func() { _, _ = io.Copy(ss.ch, ptmx); close(outDone) }()
	_ = cmd.Wait()

	t := time.NewTimer(ptyDrain)
	defer t.Stop()
	select {
	case <-outDone:
	case <-ss.aborted:
	case <-t.C:
	}
	_ = ptmx.SetReadDeadline(time.Now())
	<-outDone
	return cmd.ProcessState, nil
}

// openPty allocates a pty whose master is non-blocking and registered with
// the runtime poller: creack/pty's ioctls leave the master in blocking mode,
// where a read can be neither timed out nor interrupted by Close.
func openPty() (ptmx, tty *os.File, err error) {
	p, t, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer p.Close()
	fd, err := unix.Dup(int(p.Fd()))
	if err != nil {
		t.Close()
		return nil, nil, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		t.Close()
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), p.Name()), t, nil
}

// setWinsize is TIOCSWINSZ through the poller-safe raw connection.
func setWinsize(f *os.File, p *ptyReq) error {
	if p == nil {
		return nil
	}
	ws := &unix.Winsize{Row: uint16(p.Rows), Col: uint16(p.Columns), Xpixel: uint16(p.Wpx), Ypixel: uint16(p.Hpx)}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); err != nil {
		return err
	}
	return ierr
}

func (ss *session) runSFTP() {
	home := workDir(ss.srv.cfg.Home)
	// Symlink requests are served by the filter (sftp.go), the rest by
	// pkg/sftp's server, relative paths resolved against home.
	f := newSFTPFilter(ss.ch, home)
	opts := []sftp.ServerOption{sftp.WithServerWorkingDirectory(home)}
	srv, err := sftp.NewServer(f.serverConn(ss.ch.Close), opts...)
	if err != nil {
		fmt.Fprintf(ss.ch.Stderr(), "ldtlab-agent: sftp: %v\n", err)
		ss.finish(exitCodeMsg(1))
		return
	}
	go f.run()
	code := 0
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		ss.srv.cfg.Logf("sftp: %v", err)
		code = 1
	}
	ss.finish(exitCodeMsg(code))
}

type exitMessage struct {
	name    string
	payload []byte
}

func exitCodeMsg(code int) exitMessage {
	return exitMessage{"exit-status", ssh.Marshal(&exitStatusMsg{Status: uint32(code)})}
}

func exitMsg(st *os.ProcessState) exitMessage {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		name := unix.SignalName(ws.Signal())
		if len(name) > 3 {
			name = name[3:] // RFC 4254 names drop the "SIG" prefix
		}
		return exitMessage{"exit-signal", ssh.Marshal(&exitSignalMsg{Signal: name, CoreDumped: ws.CoreDump()})}
	}
	return exitCodeMsg(st.ExitCode())
}

// finish reports the exit and closes the channel (EOF, status, close, the
// order OpenSSH uses).
func (ss *session) finish(m exitMessage) {
	ss.mu.Lock()
	ss.finished = true
	ss.mu.Unlock()
	_ = ss.ch.CloseWrite()
	_, _ = ss.ch.SendRequest(m.name, false, m.payload)
	_ = ss.ch.Close()
}
