// Command ldtlab-agent is the guest's /init and its SSH agent.
//
// As PID 1 it prepares the system (mounts, modules, swap, data disk), starts
// "ldtlab-agent serve" as a child and reaps every process. The serve mode is
// the SSH server on the virtio-serial port "ldtlab.ctl" described in
// docs/design.md; its flags let the same server run on a host for tests.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"ldtlab/guest/agent"
	"ldtlab/guest/agent/boot"
)

// fw_cfg files through which the host hands over the keys.
const (
	fwCfgDir         = "/sys/firmware/qemu_fw_cfg/by_name/opt/ldtlab/"
	fwCfgHostKey     = fwCfgDir + "host_key/raw"
	fwCfgAuthorized  = fwCfgDir + "authorized_key/raw"
	fwCfgShares      = fwCfgDir + "shares/raw"
	agentRestartWait = time.Second
)

func main() {
	// PID 1 first: the kernel passes unknown command line words as argv.
	if os.Getpid() == 1 {
		initMain()
	}
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		os.Exit(serveMain(os.Args[2:]))
	}
	fmt.Fprintln(os.Stderr, "usage: ldtlab-agent serve [--port PATH] [--host-key PATH] [--authorized-key PATH] [--shell PATH] [--kmsg PATH]\n(run without arguments as PID 1 it is the guest's init)")
	os.Exit(2)
}

// initMain never returns: PID 1 exiting panics the kernel.
func initMain() {
	log := boot.NewLog("ldtlab-init")
	// Installed before anything slow so that a power button press is never
	// lost, whatever phase init is in.
	boot.HandlePowerSignals(log)
	// Register before the first child is started, so no SIGCHLD is missed.
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)

	if err := boot.MountBase(log); err != nil {
		log.Printf("some mounts failed, continuing")
	}
	boot.SecureRoot(log)
	boot.FixStdio()
	boot.QuietKmsgLimit()
	os.Setenv("PATH", agent.BasePath)

	cmdline, err := boot.ReadCmdline()
	if err != nil {
		log.Printf("reading /proc/cmdline: %v", err)
	}
	name := cmdline.Hostname()
	if err := boot.SetHostname(name); err != nil {
		log.Printf("%v", err)
	}
	boot.EnsurePowerApplets()
	if err := boot.LoopbackUp(); err != nil {
		log.Printf("%v", err)
	}
	log.Printf("hostname %s, kernel %s", name, boot.KernelRelease())

	modDir := "/lib/modules/" + boot.KernelRelease() + "/extra"
	if n := boot.LoadModules(modDir, log); n > 0 {
		log.Printf("loaded %d module(s) from %s", n, modDir)
	}

	if size, err := cmdline.ZramSize(); err != nil {
		log.Printf("%v; no zram swap", err)
	} else if err := boot.SetupZram(size); err != nil {
		log.Printf("zram swap: %v", err)
	} else if size > 0 {
		log.Printf("zram swap %d bytes (priority %d)", size, boot.ZramSwapPriority)
	}
	if err := boot.SetupDisks(log); err != nil {
		log.Printf("disks: %v", err)
	}
	// Host directories (`labctl up --share`), before the agent: the host
	// checks the status once it can reach the agent.
	if spec, err := os.ReadFile(fwCfgShares); err == nil {
		if err := boot.MountShares(string(spec), boot.SharesStatus, log); err != nil {
			log.Printf("shares: %v", err)
		}
	}

	if cmdline.Bool("ldtlab.hang") {
		log.Printf("hang requested (ldtlab.hang=1): not starting the agent, sleeping forever")
		reapLoop(log, sigchld, false)
	}
	reapLoop(log, sigchld, true)
}

// reapLoop reaps every child (orphans are re-parented to PID 1) and, when
// withAgent is set, keeps one "ldtlab-agent serve" child alive.
func reapLoop(log *boot.Log, sigchld <-chan os.Signal, withAgent bool) {
	exe, err := os.Executable()
	if err != nil {
		exe = "/init"
	}
	agentPid := 0
	var restart <-chan time.Time
	startAgent := func() {
		pid, err := syscall.ForkExec(exe, []string{"ldtlab-agent", "serve"}, &syscall.ProcAttr{
			Env:   os.Environ(),
			Files: []uintptr{0, 1, 2},
		})
		if err != nil {
			log.Printf("starting agent: %v; retrying in %v", err, agentRestartWait)
			restart = time.After(agentRestartWait)
			return
		}
		agentPid = pid
	}
	if withAgent {
		startAgent()
	}
	for {
		// Reap first: SIGCHLDs coalesce, and children may have exited
		// before the loop started.
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			if pid == agentPid {
				log.Printf("agent (pid %d) died: %s; restarting in %v", pid, describe(ws), agentRestartWait)
				agentPid = 0
				restart = time.After(agentRestartWait)
			}
		}
		select {
		case <-sigchld:
		case <-restart:
			restart = nil
			startAgent()
		}
	}
}

func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

func serveMain(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := fs.String("port", "", "channel device (default: the virtio-serial port named "+boot.CtlPortName+"); a unix socket path is dialled")
	hostKey := fs.String("host-key", fwCfgHostKey, "SSH host private key (OpenSSH PEM)")
	authKey := fs.String("authorized-key", fwCfgAuthorized, "authorized_keys line of the only accepted client key")
	shell := fs.String("shell", "/bin/sh", "shell that runs commands")
	kmsg := fs.String("kmsg", "/dev/kmsg", "kernel log device for progress lines; empty: stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := boot.NewLog("ldtlab-agent")
	log.KmsgPath = *kmsg
	// Agitators squeeze memory on purpose: the OOM killer must take them,
	// not the lab's channel (init restarts the agent and the host
	// reconnects, but the command in flight is lost).
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		log.Printf("cannot protect the agent from the OOM killer: %v", err)
	}

	path := *port
	if path == "" {
		var err error
		// The port normally exists by the time init starts us; the retry only
		// covers slow device probing and costs nothing in the happy path.
		path, err = retry(10*time.Second, func() (string, error) { return boot.FindPort("/sys", boot.CtlPortName) })
		if err != nil {
			log.Printf("%v", err)
			return 1
		}
	}
	signer, pub := loadKeys(log, *hostKey, *authKey)
	if signer == nil {
		return 1
	}
	srv, err := agent.NewServer(agent.Config{HostKey: signer, AuthorizedKey: pub, Shell: *shell, Logf: log.Printf})
	if err != nil {
		log.Printf("%v", err)
		return 1
	}

	log.Printf("ready on %s", path)
	ctx := context.Background()
	for {
		rw, err := openChannel(path)
		if err != nil {
			log.Printf("opening %s: %v", path, err)
			time.Sleep(time.Second)
			continue
		}
		err = srv.Serve(ctx, rw)
		log.Printf("%v; waiting for the host again", err)
		// Not a busy loop if the port keeps failing at once.
		time.Sleep(200 * time.Millisecond)
	}
}

func loadKeys(log *boot.Log, hostKey, authKey string) (ssh.Signer, ssh.PublicKey) {
	type pair struct {
		s ssh.Signer
		p ssh.PublicKey
	}
	res, err := retry(5*time.Second, func() (pair, error) {
		s, p, err := agent.LoadKeyFiles(hostKey, authKey)
		return pair{s, p}, err
	})
	if err != nil {
		log.Printf("%v", err)
		return nil, nil
	}
	return res.s, res.p
}

// openChannel opens the port device, or dials it when it is a unix socket
// (host tests, or a guest-less setup).
func openChannel(path string) (io.ReadWriteCloser, error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		return net.Dial("unix", path)
	}
	return agent.OpenPort(path)
}

// retry calls f until it succeeds or d has passed, polling every 20 ms.
func retry[T any](d time.Duration, f func() (T, error)) (T, error) {
	deadline := time.Now().Add(d)
	for {
		v, err := f()
		if err == nil || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
