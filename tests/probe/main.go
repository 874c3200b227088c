// Command probe is what the security test runs as an unprivileged user
// (uid 65534): it tries one way into the lab and exits 0 only if it got
// in. It prints what it reached, never the content it read.
//
//	probe dial ADDR    connect (ADDR: a socket path, @abstract, or host:port)
//	probe read PATH    open and read a file
//	probe gdb ADDR     connect to a gdbstub, read the guest's registers, detach
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: probe dial|read|gdb ADDR")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dial":
		var c net.Conn
		if c, err = dial(os.Args[2]); err == nil {
			c.Close()
			fmt.Println("connected")
		}
	case "read":
		var b []byte
		if b, err = os.ReadFile(os.Args[2]); err == nil {
			fmt.Printf("read %d bytes\n", len(b))
		}
	case "gdb":
		err = gdbRegisters(os.Args[2])
	default:
		err = fmt.Errorf("unknown probe %q", os.Args[1])
	}
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}

// dial picks the network from the address's form.
func dial(addr string) (net.Conn, error) {
	network := "unix"
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") && strings.Contains(addr, ":") {
		network = "tcp"
	}
	return net.DialTimeout(network, addr, 5*time.Second)
}

// gdbRegisters speaks enough of GDB's remote serial protocol to ask for
// the general registers ('g') and checks that hex came back. QEMU stops
// the guest when a debugger attaches and may report that stop on its own
// (a T05 packet), so replies are read until the one asked for.
func gdbRegisters(addr string) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, packet("g")); err != nil {
		return err
	}
	isHex := func(s string) bool { return len(s) >= 16 && strings.Trim(s, "0123456789abcdefx") == "" }
	regs, err := replyUntil(r, c, isHex)
	if err != nil {
		return fmt.Errorf("gdbstub did not answer 'g': %w", err)
	}
	fmt.Printf("read %d hex digits of registers\n", len(regs))
	// Detach, which lets the guest run again.
	if _, err := io.WriteString(c, packet("D")); err != nil {
		return err
	}
	if _, err := replyUntil(r, c, func(s string) bool { return s == "OK" }); err != nil {
		return fmt.Errorf("gdbstub did not detach: %w", err)
	}
	return nil
}

// replyUntil reads packets until one satisfies want (at most 8).
func replyUntil(r *bufio.Reader, w io.Writer, want func(string) bool) (string, error) {
	var seen []string
	for range 8 {
		body, err := reply(r, w)
		if err != nil {
			return "", err
		}
		if want(body) {
			return body, nil
		}
		seen = append(seen, body)
	}
	return "", fmt.Errorf("unexpected answers %q", seen)
}

func packet(body string) string {
	var sum byte
	for i := 0; i < len(body); i++ {
		sum += body[i]
	}
	return fmt.Sprintf("$%s#%02x", body, sum)
}

// reply reads one packet (skipping acks), acknowledges it and returns its body.
func reply(r *bufio.Reader, w io.Writer) (string, error) {
	for {
		b, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		if b != '$' {
			continue // '+' acks, stray bytes
		}
		body, err := r.ReadString('#')
		if err != nil {
			return "", err
		}
		if _, err := io.ReadFull(r, make([]byte, 2)); err != nil {
			return "", err
		}
		io.WriteString(w, "+")
		return strings.TrimSuffix(body, "#"), nil
	}
}
