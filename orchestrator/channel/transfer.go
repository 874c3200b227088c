package channel

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/pkg/sftp"
)

// modeBits are the mode bits transfers keep.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Upload copies the local file or directory tree to the guest path remote
// (remote names the copy itself, not a directory to put it in). Regular
// files, directories and symlinks are copied, with their mode bits.
func (c *Client) Upload(ctx context.Context, local, remote string) error {
	sc, stop, err := c.sftp(ctx)
	if err != nil {
		return fmt.Errorf("upload %s: %w", local, err)
	}
	defer stop()
	if err := upload(ctx, sc, local, remote); err != nil {
		return fmt.Errorf("upload %s to guest %s: %w", local, remote, ctxErr(ctx, err))
	}
	return nil
}

// Download copies the guest file or directory tree remote to local, the
// mirror image of Upload.
func (c *Client) Download(ctx context.Context, remote, local string) error {
	sc, stop, err := c.sftp(ctx)
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	defer stop()
	if err := download(ctx, sc, remote, local); err != nil {
		return fmt.Errorf("download guest %s to %s: %w", remote, local, ctxErr(ctx, err))
	}
	return nil
}

// sftp opens an sftp session that is torn down when ctx ends, which aborts
// any transfer in flight.
func (c *Client) sftp(ctx context.Context) (*sftp.Client, func(), error) {
	sc, err := sftp.NewClient(c.ssh, sftp.UseConcurrentWrites(true))
	if err != nil {
		return nil, nil, fmt.Errorf("starting sftp: %w", err)
	}
	stopCtx := context.AfterFunc(ctx, func() { sc.Close() })
	return sc, func() { stopCtx(); sc.Close() }, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

func upload(ctx context.Context, sc *sftp.Client, local, remote string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(local)
	if err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return uploadFile(sc, local, remote, fi.Mode()&modeBits)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(local)
		if err != nil {
			return err
		}
		_ = sc.Remove(remote)
		return sc.Symlink(target, remote)
	case fi.IsDir():
		// Writable while filling it; the real mode is set afterwards so a
		// read-only directory can still be populated.
		if err := sc.Mkdir(remote); err != nil {
			if st, serr := sc.Stat(remote); serr != nil || !st.IsDir() {
				return fmt.Errorf("mkdir %s: %w", remote, err)
			}
		}
		if err := sc.Chmod(remote, 0o700); err != nil {
			return err
		}
		entries, err := os.ReadDir(local)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := upload(ctx, sc, filepath.Join(local, e.Name()), path.Join(remote, e.Name())); err != nil {
				return err
			}
		}
		return sc.Chmod(remote, fi.Mode()&modeBits)
	}
	return fmt.Errorf("%s: unsupported file type %v", local, fi.Mode().Type())
}

func uploadFile(sc *sftp.Client, local, remote string, mode fs.FileMode) error {
	src, err := os.Open(local)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := sc.OpenFile(remote, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", remote, err)
	}
	if _, err := dst.ReadFrom(src); err != nil {
		dst.Close()
		return fmt.Errorf("write %s: %w", remote, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("close %s: %w", remote, err)
	}
	return sc.Chmod(remote, mode)
}

func download(ctx context.Context, sc *sftp.Client, remote, local string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := sc.Lstat(remote)
	if err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return downloadFile(sc, remote, local, fi.Mode()&modeBits)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := sc.ReadLink(remote)
		if err != nil {
			return err
		}
		_ = os.Remove(local)
		return os.Symlink(target, local)
	case fi.IsDir():
		if err := os.Mkdir(local, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		if err := os.Chmod(local, 0o700); err != nil {
			return err
		}
		entries, err := sc.ReadDir(remote)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := download(ctx, sc, path.Join(remote, e.Name()), filepath.Join(local, e.Name())); err != nil {
				return err
			}
		}
		return os.Chmod(local, fi.Mode()&modeBits)
	}
	return fmt.Errorf("guest %s: unsupported file type %v", remote, fi.Mode().Type())
}

func downloadFile(sc *sftp.Client, remote, local string, mode fs.FileMode) error {
	src, err := sc.Open(remote)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := src.WriteTo(dst); err != nil {
		dst.Close()
		return fmt.Errorf("read %s: %w", remote, err)
	}
	if err := dst.Close(); err != nil {
		return err
	}
	// Explicit chmod: the umask must not eat mode bits.
	return os.Chmod(local, mode)
}
