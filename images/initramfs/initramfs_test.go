package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rec is one parsed newc record.
type rec struct {
	ino, mode, uid, gid, nlink, mtime  uint32
	devMajor, devMinor, rMajor, rMinor uint32
	check                              uint32
	name                               string
	data                               []byte
}

// readNewc parses an archive strictly: every header must start on a 4-byte
// boundary, padding must be zero, and the archive must end right after
// TRAILER!!!'s padding. The trailer is not returned.
func readNewc(t *testing.T, b []byte) []rec {
	t.Helper()
	var out []rec
	off := 0
	skipPad := func(n int) {
		for range pad4(n) {
			require.Less(t, off, len(b), "padding past end")
			require.Zero(t, b[off], "non-zero padding at %d", off)
			off++
		}
	}
	for {
		require.Zero(t, off%4, "header at unaligned offset %d", off)
		require.LessOrEqual(t, off+headerLen, len(b), "truncated header")
		h := b[off : off+headerLen]
		require.Equal(t, magic, string(h[:6]))
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			require.NoError(t, err)
			f[i] = uint32(v)
		}
		off += headerLen
		nameSize := int(f[11])
		require.LessOrEqual(t, off+nameSize, len(b))
		require.Equal(t, byte(0), b[off+nameSize-1], "name not NUL terminated")
		name := string(b[off : off+nameSize-1])
		off += nameSize
		skipPad(headerLen + nameSize)
		size := int(f[6])
		require.LessOrEqual(t, off+size, len(b))
		data := b[off : off+size]
		off += size
		skipPad(size)
		if name == trailerName {
			require.Equal(t, len(b), off, "bytes after the trailer")
			return out
		}
		out = append(out, rec{
			ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5],
			devMajor: f[7], devMinor: f[8], rMajor: f[9], rMinor: f[10], check: f[12],
			name: name, data: data,
		})
	}
}

// golden is a tiny archive written out by hand from the newc format description.
var golden = "" +
	"070701" + "00000001" + "000041ED" + "00000000" + "00000000" + "00000002" + "00000000" + "00000000" +
	"00000000" + "00000000" + "00000000" + "00000000" + "00000002" + "00000000" + ".\x00" +
	"070701" + "00000002" + "000041ED" + "00000000" + "00000000" + "00000002" + "00000000" + "00000000" +
	"00000000" + "00000000" + "00000000" + "00000000" + "00000004" + "00000000" + "dev\x00" + "\x00\x00" +
	"070701" + "00000003" + "00002180" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" +
	"00000000" + "00000000" + "00000005" + "00000001" + "0000000C" + "00000000" + "dev/console\x00" + "\x00\x00" +
	"070701" + "00000004" + "000081ED" + "00000000" + "00000000" + "00000001" + "00000000" + "00000003" +
	"00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000" + "init\x00" + "\x00" + "hi\n" + "\x00" +
	"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" +
	"00000000" + "00000000" + "00000000" + "00000000" + "0000000B" + "00000000" + "TRAILER!!!\x00" + "\x00\x00\x00"

func TestGolden(t *testing.T) {
	var a Archive
	require.NoError(t, a.AddFile("/init", 0o755, []byte("hi\n")))
	require.NoError(t, a.AddCharDev("/dev/console", 0o600, 5, 1))
	var buf bytes.Buffer
	n, err := a.WriteTo(&buf)
	require.NoError(t, err)
	assert.Equal(t, int64(len(golden)), n)
	assert.Equal(t, golden, buf.String())
}

// build writes the same tree with host files from dir, adding entries in
// the given order.
func build(t *testing.T, hostDir string, order []int) []byte {
	t.Helper()
	adds := []func(a *Archive) error{
		func(a *Archive) error { return a.AddHostFile("sbin/init", filepath.Join(hostDir, "agent"), 0o755) },
		func(a *Archive) error {
			return a.AddHostFile("lib/modules/ldt.ko", filepath.Join(hostDir, "ldt.ko"), 0o644)
		},
		func(a *Archive) error { return a.AddFile("etc/hostname", 0o644, []byte("ldtlab\n")) },
		func(a *Archive) error { return a.AddSymlink("init", "sbin/init") },
		func(a *Archive) error { return a.AddCharDev("dev/console", 0o600, 5, 1) },
		func(a *Archive) error { return a.AddCharDev("dev/null", 0o666, 1, 3) },
		func(a *Archive) error { return a.AddDir("tmp", 0o1777) },
		func(a *Archive) error { return a.AddDir("proc", 0o555) },
	}
	require.Len(t, order, len(adds))
	var a Archive
	for _, i := range order {
		require.NoError(t, adds[i](&a))
	}
	var buf bytes.Buffer
	_, err := a.WriteTo(&buf)
	require.NoError(t, err)
	return buf.Bytes()
}

func hostFiles(t *testing.T, mtime time.Time, perm fs.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{"agent": "\x7fELF agent binary", "ldt.ko": "module"} {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(data), perm))
		require.NoError(t, os.Chtimes(p, mtime, mtime))
	}
	return dir
}

func TestReproducible(t *testing.T) {
	dirA := hostFiles(t, time.Unix(1000, 0), 0o600)
	dirB := hostFiles(t, time.Now(), 0o755)
	a := build(t, dirA, []int{0, 1, 2, 3, 4, 5, 6, 7})
	b := build(t, dirB, []int{7, 6, 5, 4, 3, 2, 1, 0})
	c := build(t, dirB, []int{3, 0, 6, 1, 4, 7, 2, 5})
	assert.Equal(t, a, b)
	assert.Equal(t, a, c)
}

func TestRoundTrip(t *testing.T) {
	data := build(t, hostFiles(t, time.Now(), 0o644), []int{0, 1, 2, 3, 4, 5, 6, 7})
	recs := readNewc(t, data)

	type want struct {
		name  string
		mode  uint32
		nlink uint32
		rdev  [2]uint32
		data  string
	}
	wants := []want{
		{".", 0o040755, 2, [2]uint32{}, ""},
		{"dev", 0o040755, 2, [2]uint32{}, ""},
		{"dev/console", 0o020600, 1, [2]uint32{5, 1}, ""},
		{"dev/null", 0o020666, 1, [2]uint32{1, 3}, ""},
		{"etc", 0o040755, 2, [2]uint32{}, ""},
		{"etc/hostname", 0o100644, 1, [2]uint32{}, "ldtlab\n"},
		{"init", 0o120777, 1, [2]uint32{}, "sbin/init"},
		{"lib", 0o040755, 2, [2]uint32{}, ""},
		{"lib/modules", 0o040755, 2, [2]uint32{}, ""},
		{"lib/modules/ldt.ko", 0o100644, 1, [2]uint32{}, "module"},
		{"proc", 0o040555, 2, [2]uint32{}, ""},
		{"sbin", 0o040755, 2, [2]uint32{}, ""},
		{"sbin/init", 0o100755, 1, [2]uint32{}, "\x7fELF agent binary"},
		{"tmp", 0o041777, 2, [2]uint32{}, ""},
	}
	require.Len(t, recs, len(wants))
	for i, w := range wants {
		r := recs[i]
		t.Run(w.name, func(t *testing.T) {
			assert.Equal(t, w.name, r.name)
			assert.Equal(t, fmt.Sprintf("%o", w.mode), fmt.Sprintf("%o", r.mode))
			assert.Equal(t, w.nlink, r.nlink)
			assert.Equal(t, w.rdev, [2]uint32{r.rMajor, r.rMinor})
			assert.Equal(t, w.data, string(r.data))
			assert.Equal(t, uint32(i+1), r.ino, "sequential inode numbers")
			assert.Zero(t, r.uid+r.gid+r.mtime+r.devMajor+r.devMinor+r.check)
		})
	}
}

// TestPadding covers names and sizes around multiples of 4: the header is
// 110 bytes, so name sizes (with NUL) of 2, 6, 10 need no header padding.
func TestPadding(t *testing.T) {
	align := func(n int) int { return n + pad4(n) }
	trailer := align(headerLen + len(trailerName) + 1)
	for nameLen := 1; nameLen <= 9; nameLen++ {
		for size := 0; size <= 9; size++ {
			t.Run(fmt.Sprintf("name%d_size%d", nameLen, size), func(t *testing.T) {
				name := strings.Repeat("n", nameLen)
				data := bytes.Repeat([]byte{0xff}, size) // non-zero, so padding cannot hide in it
				var buf bytes.Buffer
				w := NewWriter(&buf)
				require.NoError(t, w.WriteEntry(Entry{Path: name, Mode: 0o644, Data: data}))
				require.NoError(t, w.Close())
				assert.Equal(t, align(headerLen+nameLen+1)+align(size)+trailer, buf.Len())
				assert.Equal(t, int64(buf.Len()), w.Written())
				recs := readNewc(t, buf.Bytes())
				require.Len(t, recs, 1)
				assert.Equal(t, name, recs[0].name)
				assert.Equal(t, data, recs[0].data)
			})
		}
	}
}

// TestHostFilePadding streams host files of sizes around multiples of 4.
func TestHostFilePadding(t *testing.T) {
	dir := t.TempDir()
	for size := range 9 {
		var a Archive
		p := filepath.Join(dir, strconv.Itoa(size))
		data := bytes.Repeat([]byte{'x'}, size)
		require.NoError(t, os.WriteFile(p, data, 0o644))
		require.NoError(t, a.AddHostFile("f", p, 0o644))
		var viaHost, viaBytes bytes.Buffer
		_, err := a.WriteTo(&viaHost)
		require.NoError(t, err)
		var b Archive
		require.NoError(t, b.AddFile("f", 0o644, data))
		_, err = b.WriteTo(&viaBytes)
		require.NoError(t, err)
		assert.Equal(t, viaBytes.Bytes(), viaHost.Bytes(), "size %d", size)
	}
}

func TestArchiveAddErrors(t *testing.T) {
	hostDir := t.TempDir()
	hostFile := filepath.Join(hostDir, "f")
	require.NoError(t, os.WriteFile(hostFile, []byte("x"), 0o644))

	tests := []struct {
		name    string
		adds    func(a *Archive) error // the last call's error is checked
		wantErr string                 // "" means no error
	}{
		{"file twice", func(a *Archive) error {
			a.AddFile("etc/passwd", 0o644, nil)
			return a.AddFile("etc/passwd", 0o644, nil)
		}, "duplicate entry etc/passwd"},
		{"same path spelled differently", func(a *Archive) error {
			a.AddFile("/init", 0o755, nil)
			return a.AddSymlink("init//", "x")
		}, "duplicate entry init"},
		{"dir twice", func(a *Archive) error {
			a.AddDir("tmp", 0o755)
			return a.AddDir("tmp", 0o1777)
		}, "duplicate entry tmp"},
		{"file over implicit dir", func(a *Archive) error {
			a.AddFile("lib/x", 0o644, nil)
			return a.AddFile("lib", 0o644, nil)
		}, "duplicate entry lib"},
		{"child of a file", func(a *Archive) error {
			a.AddFile("bin", 0o755, nil)
			return a.AddFile("bin/sh", 0o755, nil)
		}, "bin/sh: parent bin is not a directory"},
		{"explicit dir over implicit one", func(a *Archive) error {
			a.AddFile("lib/x", 0o644, nil)
			return a.AddDir("lib", 0o700)
		}, ""},
		{"dotdot", func(a *Archive) error { return a.AddFile("../etc/passwd", 0o644, nil) }, "contains .."},
		{"root", func(a *Archive) error { return a.AddDir("/", 0o755) }, "archive root"},
		{"empty", func(a *Archive) error { return a.AddFile("", 0o644, nil) }, "empty path"},
		{"trailer name", func(a *Archive) error { return a.AddFile("TRAILER!!!", 0o644, nil) }, "invalid path"},
		{"type bits in mode", func(a *Archive) error { return a.AddFile("x", fs.ModeDir|0o755, nil) }, "permission bits only"},
		{"empty symlink", func(a *Archive) error { return a.AddSymlink("x", "") }, "empty symlink target"},
		{"host file missing", func(a *Archive) error { return a.AddHostFile("x", filepath.Join(hostDir, "nope"), 0o644) }, "no such file"},
		{"host file is a dir", func(a *Archive) error { return a.AddHostFile("x", hostDir, 0o644) }, "not a regular file"},
		{"host file ok", func(a *Archive) error { return a.AddHostFile("x", hostFile, 0o644) }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Archive
			err := tt.adds(&a)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

// TestImplicitDirOrderIndependent: an explicit directory mode wins whether it
// is added before or after the files that imply the directory.
func TestImplicitDirOrderIndependent(t *testing.T) {
	var before, after Archive
	require.NoError(t, before.AddDir("root", 0o700))
	require.NoError(t, before.AddFile("root/.profile", 0o644, nil))
	require.NoError(t, after.AddFile("root/.profile", 0o644, nil))
	require.NoError(t, after.AddDir("root", 0o700))
	var b1, b2 bytes.Buffer
	_, err := before.WriteTo(&b1)
	require.NoError(t, err)
	_, err = after.WriteTo(&b2)
	require.NoError(t, err)
	assert.Equal(t, b1.Bytes(), b2.Bytes())
	assert.Equal(t, uint32(0o040700), readNewc(t, b1.Bytes())[1].mode)
}

func TestFailedAddLeavesArchiveUnchanged(t *testing.T) {
	var a Archive
	require.NoError(t, a.AddFile("a", 0o644, nil))
	require.Error(t, a.AddFile("b/c/a/x", fs.ModeSymlink, nil))
	require.Error(t, a.AddFile("a/x/y", 0o644, nil))
	assert.Equal(t, 1, a.Len())
}

type failWriter struct{ after int }

func (f *failWriter) Write(b []byte) (int, error) {
	if len(b) > f.after {
		n := f.after
		f.after = 0
		return n, errors.New("disk full")
	}
	f.after -= len(b)
	return len(b), nil
}

func TestWriterErrors(t *testing.T) {
	tests := []struct {
		name    string
		run     func(w *Writer) error
		wantErr string
	}{
		{"socket type", func(w *Writer) error { return w.WriteEntry(Entry{Path: "s", Mode: fs.ModeSocket}) }, "unsupported file type"},
		{"empty name", func(w *Writer) error { return w.WriteEntry(Entry{Mode: 0o644}) }, "invalid entry name"},
		{"NUL in name", func(w *Writer) error { return w.WriteEntry(Entry{Path: "a\x00b", Mode: 0o644}) }, "invalid entry name"},
		{"data on a dir", func(w *Writer) error { return w.WriteEntry(Entry{Path: "d", Mode: fs.ModeDir, Data: []byte("x")}) }, "data on a non-file"},
		{"after close", func(w *Writer) error { w.Close(); return w.WriteEntry(Entry{Path: "f"}) }, "write after Close"},
		{"block device ok", func(w *Writer) error {
			return w.WriteEntry(Entry{Path: "dev/vda", Mode: fs.ModeDevice | 0o660, Major: 254})
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run(NewWriter(&bytes.Buffer{}))
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestWriteToShortWrite(t *testing.T) {
	var a Archive
	require.NoError(t, a.AddFile("f", 0o644, bytes.Repeat([]byte("x"), 200)))
	n, err := a.WriteTo(&failWriter{after: 150})
	require.ErrorContains(t, err, "disk full")
	assert.Equal(t, int64(150), n)
}

// TestGNUCpio has the system cpio list and extract what we wrote.
func TestGNUCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed")
	}
	data := build(t, hostFiles(t, time.Now(), 0o644), []int{0, 1, 2, 3, 4, 5, 6, 7})

	cmd := exec.Command(cpio, "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, []string{
		".", "dev", "dev/console", "dev/null", "etc", "etc/hostname", "init", "lib", "lib/modules",
		"lib/modules/ldt.ko", "proc", "sbin", "sbin/init", "tmp",
	}, strings.Fields(string(out)))

	cmd = exec.Command(cpio, "-tv", "--quiet")
	cmd.Stdin = bytes.NewReader(data)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Regexp(t, `(?m)^crw------- .* 5,\s+1 .*dev/console$`, string(out))
	assert.Regexp(t, `(?m)^lrwxrwxrwx .* init -> sbin/init$`, string(out))

	cmd = exec.Command(cpio, "-i", "--quiet", "--to-stdout", "etc/hostname")
	cmd.Stdin = bytes.NewReader(data)
	out, err = cmd.Output()
	require.NoError(t, err)
	assert.Equal(t, "ldtlab\n", string(out))
}

func TestUnixMode(t *testing.T) {
	tests := []struct {
		in   fs.FileMode
		want uint32
	}{
		{0o644, 0o100644},
		{fs.ModeDir | 0o755, 0o040755},
		{fs.ModeDir | fs.ModeSticky | 0o777, 0o041777},
		{fs.ModeDir | 0o1777, 0o041777},
		{fs.ModeSetuid | 0o755, 0o104755},
		{0o4755, 0o104755},
		{fs.ModeSetgid | 0o755, 0o102755},
		{fs.ModeSymlink | 0o777, 0o120777},
		{fs.ModeDevice | fs.ModeCharDevice | 0o600, 0o020600},
		{fs.ModeDevice | 0o660, 0o060660},
	}
	for _, tt := range tests {
		t.Run(tt.in.String(), func(t *testing.T) {
			got, err := unixMode(tt.in)
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf("%o", tt.want), fmt.Sprintf("%o", got))
		})
	}
}
