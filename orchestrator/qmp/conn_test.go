package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// connServer serves one connection as a QMP server would, receiving
// descriptors with each message: serve gets each command and the fds
// that came with it and returns the lines to send back.
func connServer(t *testing.T, greeting string, serve func(cmd map[string]any, fds []int) []string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "m.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(greeting + "\n"))
		buf, oob := make([]byte, 4096), make([]byte, 256)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var fds []int
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if f, err := syscall.ParseUnixRights(&m); err == nil {
						fds = append(fds, f...)
					}
				}
			}
			sc := bufio.NewScanner(bytes.NewReader(buf[:n]))
			for sc.Scan() {
				var cmd map[string]any
				if json.Unmarshal(sc.Bytes(), &cmd) != nil {
					return
				}
				var out []string
				if cmd["execute"] == "qmp_capabilities" {
					out = []string{`{"return": {}}`}
				} else {
					out = serve(cmd, fds)
				}
				for _, o := range out {
					c.Write([]byte(o + "\n"))
				}
			}
		}
	}()
	return sock
}

const connGreeting = `{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}`

func TestConnExecute(t *testing.T) {
	for _, c := range []struct {
		name    string
		replies []string
		want    string
		wantErr string
	}{
		{"return", []string{`{"return": {"status": "running"}}`}, `{"status": "running"}`, ""},
		{"events before the return are skipped", []string{`{"event": "STOP", "timestamp": {}}`, `{"event": "RESUME"}`, `{"return": {}}`}, `{}`, ""},
		{"error response", []string{`{"error": {"class": "GenericError", "desc": "dump in progress"}}`}, "", "GenericError: dump in progress"},
		{"neither", []string{`{"id": 3}`}, "", "without return or error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := connServer(t, connGreeting, func(map[string]any, []int) []string { return c.replies })
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			conn, err := DialConn(ctx, sock)
			require.NoError(t, err)
			defer conn.Close()
			got, err := conn.Execute(ctx, "query-status", nil)
			if c.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), c.wantErr)
				return
			}
			require.NoError(t, err)
			assert.JSONEq(t, c.want, string(got))
		})
	}
}

func TestConnNotQMP(t *testing.T) {
	sock := connServer(t, `SSH-2.0-OpenSSH`, nil)
	_, err := DialConn(context.Background(), sock)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a QMP monitor")
}

// TestConnSilentServer: a server that never answers costs the caller its
// deadline, not forever.
func TestConnSilentServer(t *testing.T) {
	sock := connServer(t, connGreeting, func(map[string]any, []int) []string { return nil })
	conn, err := DialConn(context.Background(), sock)
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = conn.Execute(ctx, "query-dump", nil)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(t0), 2*time.Second)
}

// TestConnSendFD: the descriptor arrives with the getfd command, and the
// server writes into the caller's file through it.
func TestConnSendFD(t *testing.T) {
	sock := connServer(t, connGreeting, func(cmd map[string]any, fds []int) []string {
		args, _ := cmd["arguments"].(map[string]any)
		if cmd["execute"] != "getfd" || args["fdname"] != "dumpfd" || len(fds) != 1 {
			return []string{`{"error": {"class": "GenericError", "desc": "no fd"}}`}
		}
		f := os.NewFile(uintptr(fds[0]), "received")
		f.Write([]byte("written by the server"))
		f.Close()
		return []string{`{"return": {}}`}
	})
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	conn, err := DialConn(context.Background(), sock)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SendFD(context.Background(), "dumpfd", f))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "written by the server", string(b))
}
