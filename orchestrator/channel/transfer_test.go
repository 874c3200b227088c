package channel_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/channel"
)

// A hostile guest: an in-process SFTP server that answers whatever the
// test scripted, including directory listings no real file system would
// produce ("../", a name listed twice) and answers that change between
// two calls for the same path.

// fakeNode is one answer the fake server gives for a path.
type fakeNode struct {
	mode    fs.FileMode
	data    string      // regular file content
	content io.ReaderAt // overrides data (endless files)
	size    int64       // reported size when content is set
	target  string      // symlink target
	list    []fakeEntry // directory listing, sent as is
}

// fakeEntry is one directory entry as sent on the wire.
type fakeEntry struct {
	name string
	mode fs.FileMode
}

type fakeInfo struct {
	name string
	size int64
	mode fs.FileMode
}

func (fi fakeInfo) Name() string       { return fi.name }
func (fi fakeInfo) Size() int64        { return fi.size }
func (fi fakeInfo) Mode() fs.FileMode  { return fi.mode }
func (fi fakeInfo) ModTime() time.Time { return time.Unix(1e9, 0) }
func (fi fakeInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi fakeInfo) Sys() any           { return nil }

type listerAt []os.FileInfo

func (l listerAt) ListAt(out []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[off:])
	if off+int64(n) >= int64(len(l)) {
		return n, io.EOF
	}
	return n, nil
}

// hostileServer serves a scripted tree. Successive Lstat calls for a path
// get successive answers (the last one repeats); listing, readlink and
// reads use the latest answer. Every request spends budget: code that
// loops forever on a forged listing gets errors instead of hanging.
type hostileServer struct {
	mu      sync.Mutex
	answers map[string][]fakeNode
	seen    map[string]int
	budget  int
}

func (h *hostileServer) node(p string, advance bool) (fakeNode, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.budget--; h.budget < 0 {
		return fakeNode{}, errors.New("request budget exhausted")
	}
	as := h.answers[path.Clean(p)]
	if len(as) == 0 {
		return fakeNode{}, os.ErrNotExist
	}
	i := h.seen[p]
	if advance {
		h.seen[p]++
	} else if i > 0 {
		i--
	}
	if i >= len(as) {
		i = len(as) - 1
	}
	return as[i], nil
}

func (n fakeNode) info(name string) fakeInfo {
	size := int64(len(n.data))
	if n.content != nil {
		size = n.size
	}
	return fakeInfo{name: name, size: size, mode: n.mode}
}

func (h *hostileServer) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	n, err := h.node(r.Filepath, false)
	if err != nil {
		return nil, err
	}
	if n.content != nil {
		return n.content, nil
	}
	return stringReaderAt(n.data), nil
}

type stringReaderAt string

func (s stringReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(s)) {
		return 0, io.EOF
	}
	n := copy(p, s[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *hostileServer) Filewrite(*sftp.Request) (io.WriterAt, error) {
	return nil, os.ErrPermission
}

func (h *hostileServer) Filecmd(*sftp.Request) error { return os.ErrPermission }

func (h *hostileServer) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	n, err := h.node(r.Filepath, false)
	if err != nil {
		return nil, err
	}
	switch r.Method {
	case "List":
		var l listerAt
		for _, e := range n.list {
			l = append(l, fakeInfo{name: e.name, mode: e.mode})
		}
		return l, nil
	default: // Stat
		return listerAt{n.info(path.Base(r.Filepath))}, nil
	}
}

func (h *hostileServer) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	n, err := h.node(r.Filepath, true)
	if err != nil {
		return nil, err
	}
	return listerAt{n.info(path.Base(r.Filepath))}, nil
}

func (h *hostileServer) Readlink(p string) (string, error) {
	n, err := h.node(p, false)
	if err != nil {
		return "", err
	}
	if n.mode&fs.ModeSymlink == 0 {
		return "", syscall.EINVAL
	}
	return n.target, nil
}

// hostileClient connects an sftp client to a hostile server over pipes.
func hostileClient(t *testing.T, answers map[string][]fakeNode) *sftp.Client {
	t.Helper()
	h := &hostileServer{answers: answers, seen: map[string]int{}, budget: 2000}
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	srv := sftp.NewRequestServer(struct {
		io.Reader
		io.WriteCloser
	}{sr, sw}, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve() }()
	sc, err := sftp.NewClientPipe(cr, cw)
	require.NoError(t, err)
	t.Cleanup(func() {
		srv.Close() // EOF for the client's reader
		sc.Close()
		<-done
	})
	return sc
}

func dir(mode fs.FileMode, list ...fakeEntry) fakeNode {
	return fakeNode{mode: fs.ModeDir | mode, list: list}
}
func file(mode fs.FileMode, data string) fakeNode { return fakeNode{mode: mode, data: data} }
func symlink(target string) fakeNode              { return fakeNode{mode: fs.ModeSymlink | 0o777, target: target} }
func ent(name string, n fakeNode) fakeEntry       { return fakeEntry{name: name, mode: n.mode} }

// hostLayout is a test's host side: DEST, and a directory beside it that
// stands for everything outside DEST (with a root-only file in it).
type hostLayout struct {
	base, dest, outside, secret string
	modes                       map[string]fs.FileMode // before the copy
}

func newHostLayout(t *testing.T) *hostLayout {
	t.Helper()
	base := t.TempDir()
	h := &hostLayout{
		base:    base,
		dest:    filepath.Join(base, "dest"),
		outside: filepath.Join(base, "outside"),
		secret:  filepath.Join(base, "outside", "secret"),
	}
	require.NoError(t, os.Chmod(base, 0o755))
	require.NoError(t, os.Mkdir(h.dest, 0o755))
	require.NoError(t, os.Mkdir(h.outside, 0o755))
	require.NoError(t, os.WriteFile(h.secret, []byte("root only"), 0o600))
	return h
}

// snapshot records the modes of everything outside DEST's copy.
func (h *hostLayout) snapshot(t *testing.T) {
	t.Helper()
	h.modes = map[string]fs.FileMode{}
	for _, p := range []string{h.base, h.dest, h.outside, h.secret} {
		fi, err := os.Lstat(p)
		require.NoError(t, err)
		h.modes[p] = fi.Mode()
	}
}

// untouched checks that nothing outside the copy changed.
func (h *hostLayout) untouched(t *testing.T) {
	t.Helper()
	for p, m := range h.modes {
		fi, err := os.Lstat(p)
		if assert.NoError(t, err) {
			assert.Equal(t, m, fi.Mode(), "mode of %s changed", p)
		}
	}
	b, err := os.ReadFile(h.secret)
	require.NoError(t, err)
	assert.Equal(t, "root only", string(b), "the root-only file outside DEST was written")
	ents, err := os.ReadDir(h.outside)
	require.NoError(t, err)
	assert.Len(t, ents, 1, "something was created outside DEST: %v", ents)
	ents, err = os.ReadDir(h.base)
	require.NoError(t, err)
	assert.Len(t, ents, 2, "something was created beside DEST: %v", ents)
}

func perm(t *testing.T, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	require.NoError(t, err)
	return fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky | fs.ModeType)
}

func noEntry(t *testing.T, p string) {
	t.Helper()
	_, err := os.Lstat(p)
	assert.ErrorIs(t, err, os.ErrNotExist, "%s should not exist", p)
}

// TestDownloadFromHostileServer: what a guest's SFTP server says cannot
// make a download write, create or chmod anything outside the copy, keep
// setuid/setgid/sticky bits, or leave a symlink that leads out of it.
func TestDownloadFromHostileServer(t *testing.T) {
	type tc struct {
		name    string
		remote  string
		answers func(h *hostLayout) map[string][]fakeNode
		prepare func(t *testing.T, h *hostLayout) // the copy's destination before the download
		wantErr string                            // "" for success
		warns   []string                          // what the warnings say, in order
		check   func(t *testing.T, h *hostLayout, copy string)
	}
	forged := func(name string) tc {
		return tc{
			name:   "entry named " + name,
			remote: "/a/b/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/a/b/tree": {dir(0o755, fakeEntry{name, fs.ModeDir | 0o777})},
					"/a/b":      {dir(0o777, fakeEntry{name, fs.ModeDir | 0o777})},
					"/a":        {dir(0o777, ent("evil", file(0o4777, "pwned")))},
					"/a/evil":   {file(0o4777, "pwned")},
				}
			},
			wantErr: "not a file name",
		}
	}
	tests := []tc{
		forged("../"),
		forged("a/.."),
		forged("/"),
		forged(""),
		forged("x/."),
		{
			name:   "name listed twice: a symlink out of DEST, then a directory",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				x := []fakeNode{symlink(h.outside), dir(0o777, ent("pwn", file(0o4777, "pwned")))}
				return map[string][]fakeNode{
					"/tree":       {dir(0o755, ent("x", x[0]), ent("x", x[1]))},
					"/tree/x":     x,
					"/tree/x/pwn": {file(0o4777, "pwned")},
				}
			},
			wantErr: "twice",
		},
		{
			name:   "name listed twice: a file, then a directory",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				x := []fakeNode{file(0o644, "one"), dir(0o777)}
				return map[string][]fakeNode{
					"/tree":   {dir(0o755, ent("x", x[0]), ent("x", x[1]))},
					"/tree/x": x,
				}
			},
			wantErr: "twice",
		},
		{
			name:   "setuid, setgid and sticky bits are dropped",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/tree": {dir(0o755|fs.ModeSetgid,
						ent("suid", file(0o4755|fs.ModeSetuid, "")),
						ent("sgid", file(0o2755, "")),
						ent("sticky", dir(0o777)))},
					"/tree/suid":   {file(0o755|fs.ModeSetuid, "#!/bin/sh\nid\n")},
					"/tree/sgid":   {file(0o755|fs.ModeSetgid, "#!/bin/sh\nid\n")},
					"/tree/sticky": {dir(0o777 | fs.ModeSticky)},
				}
			},
			check: func(t *testing.T, h *hostLayout, copy string) {
				assert.Equal(t, fs.ModeDir|0o755, perm(t, copy))
				assert.Equal(t, fs.FileMode(0o755), perm(t, filepath.Join(copy, "suid")))
				assert.Equal(t, fs.FileMode(0o755), perm(t, filepath.Join(copy, "sgid")))
				assert.Equal(t, fs.ModeDir|0o777, perm(t, filepath.Join(copy, "sticky")))
			},
		},
		{
			name:   "absolute symlink is not recreated",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/tree":   {dir(0o755, ent("l", symlink(h.secret)))},
					"/tree/l": {symlink(h.secret)},
				}
			},
			warns: []string{"skipped guest symlink /tree/l -> /"}, // an absolute target
			check: func(t *testing.T, h *hostLayout, copy string) {
				noEntry(t, filepath.Join(copy, "l"))
			},
		},
		{
			name:   "relative symlink leading out of the copy is not recreated",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/tree":       {dir(0o755, ent("l", symlink("../../outside/secret")), ent("sub", dir(0o755)))},
					"/tree/l":     {symlink("../../outside/secret")},
					"/tree/sub":   {dir(0o755, ent("l", symlink("../../outside")))},
					"/tree/sub/l": {symlink("../../outside")},
				}
			},
			warns: []string{"/tree/l -> ../../outside/secret: it leads out of the copy", "/tree/sub/l -> ../../outside: it leads out of the copy"},
			check: func(t *testing.T, h *hostLayout, copy string) {
				noEntry(t, filepath.Join(copy, "l"))
				noEntry(t, filepath.Join(copy, "sub", "l"))
			},
		},
		{
			name:   "symlink escaping through another symlink's '..' is not recreated",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				// s -> . is harmless alone; s/../x is lexically inside
				// the copy but the kernel resolves it beside the copy.
				return map[string][]fakeNode{
					"/tree":   {dir(0o755, ent("s", symlink(".")), ent("a", symlink("s/../outside/secret")))},
					"/tree/s": {symlink(".")},
					"/tree/a": {symlink("s/../outside/secret")},
				}
			},
			warns: []string{`/tree/a -> s/../outside/secret: ".." after a name`},
			check: func(t *testing.T, h *hostLayout, copy string) {
				noEntry(t, filepath.Join(copy, "a"))
			},
		},
		{
			name:   "relative symlinks inside the copy are recreated",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/tree":            {dir(0o755, ent("f", file(0o644, "f")), ent("sub", dir(0o755)), ent("here", symlink("sub/l")))},
					"/tree/f":          {file(0o644, "f")},
					"/tree/here":       {symlink("sub/l")},
					"/tree/sub":        {dir(0o755, ent("l", symlink("../f")), ent("deeper", symlink("./x/../../f")))},
					"/tree/sub/l":      {symlink("../f")},
					"/tree/sub/deeper": {symlink("./x/../../f")},
				}
			},
			warns: []string{`/tree/sub/deeper -> ./x/../../f: ".." after a name`},
			check: func(t *testing.T, h *hostLayout, copy string) {
				for l, want := range map[string]string{"sub/l": "../f", "here": "sub/l"} {
					got, err := os.Readlink(filepath.Join(copy, l))
					if assert.NoError(t, err, l) {
						assert.Equal(t, want, got, l)
					}
				}
				b, err := os.ReadFile(filepath.Join(copy, "here"))
				require.NoError(t, err)
				assert.Equal(t, "f", string(b))
				noEntry(t, filepath.Join(copy, "sub", "deeper")) // '..' after a name
			},
		},
		{
			name:   "a directory is not chmodded or filled through an existing symlink",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/tree":       {dir(0o755, ent("x", dir(0o777)))},
					"/tree/x":     {dir(0o777, ent("pwn", file(0o4777, "pwned")))},
					"/tree/x/pwn": {file(0o4777|fs.ModeSetuid, "pwned")},
				}
			},
			prepare: func(t *testing.T, h *hostLayout) {
				require.NoError(t, os.Mkdir(filepath.Join(h.dest, "tree"), 0o755))
				require.NoError(t, os.Symlink(h.outside, filepath.Join(h.dest, "tree", "x")))
			},
			check: func(t *testing.T, h *hostLayout, copy string) {
				assert.Equal(t, fs.ModeDir|0o777, perm(t, filepath.Join(copy, "x")))
				assert.Equal(t, fs.FileMode(0o777), perm(t, filepath.Join(copy, "x", "pwn")))
			},
		},
		{
			name:   "a file is not written through an existing symlink",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{
					"/tree":   {dir(0o755, ent("f", file(0o4777, "pwned")))},
					"/tree/f": {file(0o777|fs.ModeSetuid, "pwned")},
				}
			},
			prepare: func(t *testing.T, h *hostLayout) {
				require.NoError(t, os.Mkdir(filepath.Join(h.dest, "tree"), 0o755))
				require.NoError(t, os.Symlink(h.secret, filepath.Join(h.dest, "tree", "f")))
			},
			check: func(t *testing.T, h *hostLayout, copy string) {
				assert.Equal(t, fs.FileMode(0o777), perm(t, filepath.Join(copy, "f")))
				b, err := os.ReadFile(filepath.Join(copy, "f"))
				require.NoError(t, err)
				assert.Equal(t, "pwned", string(b))
			},
		},
		{
			name:   "a single file is not written through an existing symlink",
			remote: "/f",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{"/f": {file(0o777|fs.ModeSetuid, "pwned")}}
			},
			prepare: func(t *testing.T, h *hostLayout) {
				require.NoError(t, os.Symlink(h.secret, filepath.Join(h.dest, "tree")))
			},
			check: func(t *testing.T, h *hostLayout, copy string) {
				assert.Equal(t, fs.FileMode(0o777), perm(t, copy))
			},
		},
		{
			name:   "the copy itself being a guest symlink is refused",
			remote: "/tree",
			answers: func(h *hostLayout) map[string][]fakeNode {
				return map[string][]fakeNode{"/tree": {symlink(h.outside)}}
			},
			wantErr: "symlink",
			check: func(t *testing.T, h *hostLayout, copy string) {
				noEntry(t, copy)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHostLayout(t)
			if tt.prepare != nil {
				tt.prepare(t, h)
			}
			h.snapshot(t)
			sc := hostileClient(t, tt.answers(h))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			copy := filepath.Join(h.dest, "tree")
			var warns []string
			err := channel.DownloadSFTP(ctx, sc, tt.remote, copy, channel.CopyOptions{Warn: func(m string) { warns = append(warns, m) }})
			if tt.wantErr != "" {
				if assert.Error(t, err) {
					assert.Contains(t, err.Error(), tt.wantErr)
				}
			} else {
				assert.NoError(t, err)
			}
			h.untouched(t)
			if assert.Len(t, warns, len(tt.warns), "warnings: %q", warns) {
				for i, w := range tt.warns {
					assert.Contains(t, warns[i], w)
				}
			}
			if tt.check != nil {
				tt.check(t, h, copy)
			}
		})
	}
}

// TestDownloadHostileGuestTree copies a real guest tree (the test agent
// serves this host's file system) with setuid/setgid/sticky modes and
// symlinks that lead outside the copy.
func TestDownloadHostileGuestTree(t *testing.T) {
	c := newLab(t).dial(t)
	h := newHostLayout(t)
	guest := t.TempDir()
	g := func(p string) string { return filepath.Join(guest, "tree", p) }
	require.NoError(t, os.MkdirAll(g("sub"), 0o755))
	require.NoError(t, os.Mkdir(g("tmp"), 0o755))
	require.NoError(t, os.WriteFile(g("suid"), []byte("#!/bin/sh\nid -u\n"), 0o755))
	require.NoError(t, os.WriteFile(g("sub/sgid"), []byte("x"), 0o755))
	require.NoError(t, os.Chmod(g("suid"), 0o755|fs.ModeSetuid))
	require.NoError(t, os.Chmod(g("sub/sgid"), 0o755|fs.ModeSetgid))
	require.NoError(t, os.Chmod(g("tmp"), 0o777|fs.ModeSticky))
	require.NoError(t, os.Symlink(h.secret, g("abs")))
	require.NoError(t, os.Symlink("../../outside/secret", g("rel-out")))
	require.NoError(t, os.Symlink("../suid", g("sub/rel-in")))
	h.snapshot(t)

	copy := filepath.Join(h.dest, "tree")
	var warns []string
	require.NoError(t, c.Download(testCtx(t), g(""), copy, channel.CopyOptions{Warn: func(m string) { warns = append(warns, m) }}))
	assert.Len(t, warns, 2, "%q", warns)
	h.untouched(t)
	assert.Equal(t, fs.FileMode(0o755), perm(t, filepath.Join(copy, "suid")))
	assert.Equal(t, fs.FileMode(0o755), perm(t, filepath.Join(copy, "sub/sgid")))
	assert.Equal(t, fs.ModeDir|0o777, perm(t, filepath.Join(copy, "tmp")))
	noEntry(t, filepath.Join(copy, "abs"))
	noEntry(t, filepath.Join(copy, "rel-out"))
	target, err := os.Readlink(filepath.Join(copy, "sub/rel-in"))
	require.NoError(t, err)
	assert.Equal(t, "../suid", target)
}

// TestDownloadTwiceNoWriteThrough is the report: a guest tree is
// copied, the guest then turns an entry into a setuid file, and the second
// copy of the same tree must replace the host's entry, not write (or
// chmod) through a symlink that the first copy or anyone else left there.
func TestDownloadTwiceNoWriteThrough(t *testing.T) {
	c := newLab(t).dial(t)
	h := newHostLayout(t)
	guest := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, os.Mkdir(guest, 0o755))
	require.NoError(t, os.Symlink(h.secret, filepath.Join(guest, "link")))
	require.NoError(t, os.Symlink(h.outside, filepath.Join(guest, "dirlink")))
	copy := filepath.Join(h.dest, "tree")
	ctx := testCtx(t)
	require.NoError(t, c.Download(ctx, guest, copy, channel.CopyOptions{}))

	// Whatever the first copy left, a symlink out of DEST is there now
	// (as an older labctl, or the user, could have left it).
	for _, l := range []struct{ name, target string }{{"link", h.secret}, {"dirlink", h.outside}} {
		p := filepath.Join(copy, l.name)
		_ = os.Remove(p)
		require.NoError(t, os.Symlink(l.target, p))
	}
	h.snapshot(t)

	require.NoError(t, os.Remove(filepath.Join(guest, "link")))
	require.NoError(t, os.WriteFile(filepath.Join(guest, "link"), []byte("pwned"), 0o777))
	require.NoError(t, os.Chmod(filepath.Join(guest, "link"), 0o777|fs.ModeSetuid))
	require.NoError(t, os.Remove(filepath.Join(guest, "dirlink")))
	require.NoError(t, os.Mkdir(filepath.Join(guest, "dirlink"), 0o777))
	require.NoError(t, os.Chmod(filepath.Join(guest, "dirlink"), 0o777)) // past the umask
	require.NoError(t, os.WriteFile(filepath.Join(guest, "dirlink", "pwn"), []byte("pwned"), 0o777))
	require.NoError(t, c.Download(ctx, guest, copy, channel.CopyOptions{}))

	h.untouched(t)
	assert.Equal(t, fs.FileMode(0o777), perm(t, filepath.Join(copy, "link")))
	assert.Equal(t, fs.ModeDir|0o777, perm(t, filepath.Join(copy, "dirlink")))
	b, err := os.ReadFile(filepath.Join(copy, "dirlink", "pwn"))
	require.NoError(t, err)
	assert.Equal(t, "pwned", string(b))
}

// TestUploadHostTree: an upload reads the host tree without following its
// symlinks (they are recreated as symlinks in the guest) and, by default,
// without setuid/setgid/sticky bits.
func TestUploadHostTree(t *testing.T) {
	c := newLab(t).dial(t)
	h := newHostLayout(t)
	src := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, os.Mkdir(src, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "suid"), []byte("x"), 0o755))
	require.NoError(t, os.Chmod(filepath.Join(src, "suid"), 0o755|fs.ModeSetuid))
	require.NoError(t, os.Symlink(h.secret, filepath.Join(src, "abs")))
	require.NoError(t, os.Symlink(h.outside, filepath.Join(src, "dirlink")))
	guest := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, c.Upload(testCtx(t), src, guest, channel.CopyOptions{}))

	assert.Equal(t, fs.FileMode(0o755), perm(t, filepath.Join(guest, "suid")))
	for l, want := range map[string]string{"abs": h.secret, "dirlink": h.outside} {
		got, err := os.Readlink(filepath.Join(guest, l))
		if assert.NoError(t, err, l) {
			assert.Equal(t, want, got, l)
		}
	}
}

// endless is a file that never ends, for the client at least: past
// 64 MiB it fails, so that a client without a limit fails the test
// instead of filling the disk.
type endless struct{}

func (endless) ReadAt(p []byte, off int64) (int, error) {
	if off > 64<<20 {
		return 0, errors.New("test guard: the client read 64 MiB and kept reading")
	}
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}

// TestDownloadSizeLimit: a guest that sends without end is stopped by
// MaxBytes with a clear error, progress shows it growing meanwhile, and
// the partial file does not stay to fill the disk.
func TestDownloadSizeLimit(t *testing.T) {
	for _, size := range []int64{0, 1 << 40} { // the size the guest claims
		t.Run(fmt.Sprint("claims ", size), func(t *testing.T) {
			h := newHostLayout(t)
			sc := hostileClient(t, map[string][]fakeNode{
				"/tree":       {dir(0o755, ent("small", file(0o644, "ok")), ent("big", fakeNode{mode: 0o644}))},
				"/tree/small": {file(0o644, "ok")},
				"/tree/big":   {{mode: 0o644, content: endless{}, size: size}},
			})
			var last channel.Progress
			calls := 0
			copy := filepath.Join(h.dest, "tree")
			err := channel.DownloadSFTP(testCtx(t), sc, "/tree", copy, channel.CopyOptions{
				MaxBytes: 1 << 20,
				Progress: func(p channel.Progress) { last = p; calls++ },
			})
			require.ErrorIs(t, err, channel.ErrCopyLimit)
			assert.Contains(t, err.Error(), "more than 1.0 MiB")
			assert.Contains(t, err.Error(), "in 2 files copied so far; the copy is incomplete")
			assert.Contains(t, err.Error(), filepath.Join(copy, "big"))
			assert.Equal(t, 2, last.Files)
			assert.LessOrEqual(t, last.Bytes, int64(1<<20))
			assert.Greater(t, last.Bytes, int64(1<<19))
			assert.Greater(t, calls, 10)
			noEntry(t, filepath.Join(copy, "big"))
			b, err := os.ReadFile(filepath.Join(copy, "small"))
			require.NoError(t, err)
			assert.Equal(t, "ok", string(b))
		})
	}
}

// TestPreserveSpecialBits: the bits come along only when asked, both ways.
func TestPreserveSpecialBits(t *testing.T) {
	c := newLab(t).dial(t)
	src := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, os.Mkdir(src, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "suid"), []byte("x"), 0o755))
	require.NoError(t, os.Chmod(filepath.Join(src, "suid"), 0o755|fs.ModeSetuid|fs.ModeSetgid))
	require.NoError(t, os.Chmod(src, 0o777|fs.ModeSticky))
	o := channel.CopyOptions{PreserveSpecialBits: true}
	guest := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, c.Upload(testCtx(t), src, guest, o))
	back := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, c.Download(testCtx(t), guest, back, o))
	for _, root := range []string{guest, back} {
		assert.Equal(t, fs.ModeDir|fs.ModeSticky|0o777, perm(t, root))
		assert.Equal(t, fs.ModeSetuid|fs.ModeSetgid|0o755, perm(t, filepath.Join(root, "suid")))
	}
}

// TestDownloadDestination: a destination that names no entry of its own
// is refused rather than merged into.
func TestDownloadDestination(t *testing.T) {
	sc := hostileClient(t, map[string][]fakeNode{"/tree": {dir(0o755)}})
	t.Chdir(t.TempDir()) // all the test's own, should the check ever be lost
	for _, local := range []string{".", "..", "sub/.."} {
		err := channel.DownloadSFTP(testCtx(t), sc, "/tree", local, channel.CopyOptions{})
		if assert.Error(t, err, local) {
			assert.Contains(t, err.Error(), "the destination must name the copy")
		}
	}
}

// TestUploadRelativeSymlinks: a relative host symlink arrives in the guest
// with the same target, whether the guest path is absolute or relative to
// the guest's home (issue 24 item 5: `link -> a` arrived as
// `link -> /root/a`, the SFTP server's working directory joined to it).
func TestUploadRelativeSymlinks(t *testing.T) {
	l := newLab(t)
	c := l.dial(t)
	src := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o644))
	links := map[string]string{"link": "a", "sub/up": "../a", "dot": ".", "dangling": "no/such"}
	for l, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(src, l)))
	}
	check := func(guest string) {
		t.Helper()
		for l, want := range links {
			got, err := os.Readlink(filepath.Join(guest, l))
			if assert.NoError(t, err, l) {
				assert.Equal(t, want, got, "guest symlink %s", l)
			}
		}
		b, err := os.ReadFile(filepath.Join(guest, "sub", "up"))
		require.NoError(t, err)
		assert.Equal(t, "a", string(b))
	}
	abs := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, c.Upload(testCtx(t), src, abs, channel.CopyOptions{}))
	check(abs)
	// Relative to the home directory, as `labctl cp tree x:tree` sends it.
	require.NoError(t, c.Upload(testCtx(t), src, "tree", channel.CopyOptions{}))
	check(filepath.Join(l.home, "tree"))
	// A single symlink.
	require.NoError(t, c.Upload(testCtx(t), filepath.Join(src, "link"), "one", channel.CopyOptions{}))
	got, err := os.Readlink(filepath.Join(l.home, "one"))
	require.NoError(t, err)
	assert.Equal(t, "a", got)
}

// TestCopyErrorsNameTheGuestPath: a missing guest directory or file is
// named as such, not "file does not exist" (issue 24 item 5); the errors
// still match fs.ErrNotExist.
func TestCopyErrorsNameTheGuestPath(t *testing.T) {
	l := newLab(t)
	c := l.dial(t)
	src := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(src, []byte("x"), 0o644))
	missing := filepath.Join(t.TempDir(), "no", "such")
	err := c.Upload(testCtx(t), src, filepath.Join(missing, "f"), channel.CopyOptions{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), "guest directory "+missing+" does not exist")
	assert.NotContains(t, err.Error(), "file does not exist")

	tree := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, os.Mkdir(tree, 0o755))
	err = c.Upload(testCtx(t), tree, filepath.Join(missing, "tree"), channel.CopyOptions{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), "guest directory "+missing+" does not exist")

	err = c.Download(testCtx(t), filepath.Join(missing, "f"), filepath.Join(t.TempDir(), "f"), channel.CopyOptions{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), "guest "+filepath.Join(missing, "f")+" does not exist")
	assert.NotContains(t, err.Error(), "file does not exist")

	// A relative guest path is in the home directory, named in the error.
	err = c.Upload(testCtx(t), src, "no/such/f", channel.CopyOptions{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), "guest directory "+filepath.Join(l.home, "no/such")+" does not exist")
}

// inflight is a file whose reads and writes count how many are in flight
// at once (each takes a millisecond, as over a slow guest channel).
type inflight struct {
	mu       sync.Mutex
	now, max int
	data     []byte
}

func (f *inflight) enter() {
	f.mu.Lock()
	f.now++
	f.max = max(f.max, f.now)
	f.mu.Unlock()
	time.Sleep(time.Millisecond)
}

func (f *inflight) leave() {
	f.mu.Lock()
	f.now--
	f.mu.Unlock()
}

func (f *inflight) WriteAt(p []byte, off int64) (int, error) {
	f.enter()
	defer f.leave()
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := int(off) + len(p); end > len(f.data) {
		f.data = append(f.data, make([]byte, end-len(f.data))...)
	}
	return copy(f.data[off:], p), nil
}

func (f *inflight) ReadAt(p []byte, off int64) (int, error) {
	f.enter()
	defer f.leave()
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// inflightServer serves one file, "/f", whatever is asked for.
type inflightServer struct{ f *inflight }

func (s inflightServer) Filewrite(*sftp.Request) (io.WriterAt, error) { return s.f, nil }
func (s inflightServer) Fileread(*sftp.Request) (io.ReaderAt, error)  { return s.f, nil }
func (s inflightServer) Filecmd(*sftp.Request) error                  { return nil }
func (s inflightServer) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return listerAt{fakeInfo{name: path.Base(r.Filepath), size: int64(len(s.f.data)), mode: 0o644}}, nil
}

// TestCopiesKeepRequestsInFlight: an upload, like a download, keeps many
// requests in flight, hiding the guest channel's latency (issue 24 item
// 5: uploads ran at half scp's speed, one write request at a time,
// because File.ReadFrom goes concurrent only for readers of known size).
func TestCopiesKeepRequestsInFlight(t *testing.T) {
	f := &inflight{}
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	srv := sftp.NewRequestServer(struct {
		io.Reader
		io.WriteCloser
	}{sr, sw}, sftp.Handlers{FileGet: inflightServer{f}, FilePut: inflightServer{f}, FileCmd: inflightServer{f}, FileList: inflightServer{f}})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve() }()
	sc, err := sftp.NewClientPipe(cr, cw, channel.SFTPOptions()...)
	require.NoError(t, err)
	defer func() { srv.Close(); sc.Close(); <-done }()

	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	src := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(src, data, 0o644))
	require.NoError(t, channel.UploadSFTP(testCtx(t), sc, src, "/f", channel.CopyOptions{}))
	assert.Equal(t, data, f.data)
	assert.GreaterOrEqual(t, f.max, 8, "write requests in flight at once during an upload")

	f.max = 0
	dst := filepath.Join(t.TempDir(), "back")
	require.NoError(t, channel.DownloadSFTP(testCtx(t), sc, "/f", dst, channel.CopyOptions{}))
	back, err := os.ReadFile(dst)
	require.NoError(t, err)
	assert.Equal(t, data, back)
	assert.GreaterOrEqual(t, f.max, 8, "read requests in flight at once during a download")
}
