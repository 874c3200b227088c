package main

// Helpers the verbs that act on a named VM share; each verb has its own file.

import (
	"context"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// explainVM says what happened to the VM when a command against it
// failed: a guest that died or crashed is the news, not the broken
// connection ("remote command exited without exit status").
func explainVM(name string, err error) error {
	dir, derr := lab.VMDir(name)
	if derr != nil {
		return err
	}
	for i := 0; i < 60; i++ { // the supervisor records the death shortly
		st, serr := lab.ReadState(dir)
		if serr != nil {
			break
		}
		if st.Status == lab.StatusFailed || st.Status == lab.StatusStopped {
			e := fmt.Errorf("VM %s went away during the command: %s\n(%v; `labctl logs %s` shows the console, `labctl down %s` removes it)", name, dash(st.Error), err, name, name)
			if st.Held {
				e = fmt.Errorf("VM %s panicked during the command: %s\n(held for gdb: %s\n `labctl dump %s` saves its memory, `labctl down %s` ends it)", name, dash(st.Error), st.GDBCommand(), name, name)
			}
			if st.ErrorKind == "lab" {
				return &vm.InfraError{Op: "running a command in " + name, Err: e}
			}
			return e
		}
		if !st.Alive() {
			return &vm.InfraError{Op: "running a command in " + name, Err: fmt.Errorf("the supervisor of VM %s (pid %d) died during the command (%v%s); `labctl down %s` stops what is left", name, st.SupervisorPID, err, lab.DiskHint(dir), name)}
		}
		if st.DiskError != "" {
			return &vm.InfraError{Op: "running a command in " + name, Err: fmt.Errorf("%v: the host disk failed: %s", err, st.DiskError)}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// usageError: the command line makes no sense (exit status 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// usagef prints the verb's usage and returns a usage error.
func usagef(fs *flag.FlagSet, format string, a ...any) error {
	fs.Usage()
	return usageError{fmt.Errorf(format, a...)}
}

// quietError has been printed already: main only turns it into a status.
type quietError struct{ error }

func (q quietError) Unwrap() error { return q.error }

// quiet marks err as printed (nil stays nil).
func quiet(err error) error {
	if err == nil {
		return nil
	}
	return quietError{err}
}

// connect dials a running VM's ssh.sock with its per-VM keys.
func connect(ctx context.Context, name string) (*channel.Client, error) {
	sock, _, err := lab.Socket(name)
	if err != nil {
		return nil, err
	}
	dir, _ := lab.VMDir(name)
	keys, err := channel.LoadKeys(filepath.Join(dir, "keys"))
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "unix", sock)
	if err != nil {
		return nil, &vm.InfraError{Op: "connecting to " + sock, Err: err}
	}
	c, err := channel.Dial(dctx, conn, keys)
	if err != nil {
		conn.Close()
		return nil, &vm.InfraError{Op: "ssh handshake with " + name, Err: err}
	}
	return c, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
