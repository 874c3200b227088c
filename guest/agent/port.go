package agent

import (
	"io"
	"os"
	"time"
)

// OpenPort opens a virtio-serial port device for Server.Serve.
//
// The virtio console driver returns EOF from read while no host process is
// connected to the port's chardev. Before any byte has arrived such an EOF
// means "host not there yet" and is waited out by polling; after that it
// means the host went away, and is passed on so that the session ends and
// the caller can open the port again for the next host.
func OpenPort(path string) (io.ReadWriteCloser, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &port{f: f}, nil
}

// portPoll is how often a disconnected port is re-read.
const portPoll = 20 * time.Millisecond

type port struct {
	f    *os.File
	seen bool // only touched by the single reader
}

func (p *port) Read(b []byte) (int, error) {
	for {
		n, err := p.f.Read(b)
		if n > 0 {
			p.seen = true
			return n, err
		}
		if err != io.EOF || p.seen || len(b) == 0 {
			return n, err
		}
		time.Sleep(portPoll)
	}
}

func (p *port) Write(b []byte) (int, error) { return p.f.Write(b) }
func (p *port) Close() error                { return p.f.Close() }
