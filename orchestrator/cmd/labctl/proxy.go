package main

import (
	"context"
	"flag"
	"io"
	"net"
	"os"

	"ldtlab/orchestrator/lab"
)

// The proxy verb connects stdin/stdout to a guest's SSH server.
func init() {
	register(&command{
		name:       "proxy",
		hangupEnds: true,
		args:       "NAME",
		summary:    "connect stdin/stdout to a guest's SSH server (an OpenSSH ProxyCommand)",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef(fs, "need a VM name")
			}
			sock, _, err := lab.Socket(args[0])
			if err != nil {
				return err
			}
			conn, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			defer conn.Close()
			proxy(ctx, conn.(*net.UnixConn), os.Stdin, os.Stdout)
			return nil
		},
	})
}

// proxy copies in to conn and conn to out. EOF on in only half-closes
// the connection: what the guest still sends (the answer to the last
// request) is copied until the guest closes its side or ctx ends.
func proxy(ctx context.Context, conn *net.UnixConn, in io.Reader, out io.Writer) {
	go func() { io.Copy(conn, in); conn.CloseWrite() }()
	done := make(chan struct{})
	go func() { io.Copy(out, conn); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
