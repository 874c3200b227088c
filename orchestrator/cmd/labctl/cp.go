package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"path"
	"strings"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/channel"
)

// The cp verb copies files to or from a guest over SFTP.
func init() {
	register(&command{
		name:    "cp",
		args:    "SRC DST",
		summary: "copy files or directories to or from a guest; write the guest side as NAME:PATH",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 2 {
				return usagef(fs, "need SRC and DST")
			}
			sn, sp, sRemote := splitRemote(args[0])
			dn, dp, dRemote := splitRemote(args[1])
			switch {
			case sRemote && !dRemote:
				c, err := connect(ctx, sn)
				if err != nil {
					return err
				}
				defer c.Close()
				st, err := os.Stat(dp)
				dp = copyTarget(dp, err == nil && st.IsDir(), sp)
				if err := c.Download(ctx, sp, dp); err != nil {
					return explainVM(sn, err)
				}
				return nil
			case dRemote && !sRemote:
				c, err := connect(ctx, dn)
				if err != nil {
					return err
				}
				defer c.Close()
				// Is the guest path a directory? Ask the guest's shell.
				isDir := false
				if !strings.HasSuffix(dp, "/") {
					code, err := c.Run(ctx, "test -d "+shquote.Always(dp), channel.RunOptions{})
					if err != nil {
						return explainVM(dn, err)
					}
					isDir = code == 0
				}
				if err := c.Upload(ctx, sp, copyTarget(dp, isDir, sp)); err != nil {
					return explainVM(dn, err)
				}
				return nil
			default:
				return usageError{errors.New("exactly one of SRC and DST must be NAME:PATH")}
			}
		},
	})
}

// copyTarget is where `labctl cp SRC DST` writes: into DST when DST is
// a directory (or written with a trailing slash), as cp and scp do.
func copyTarget(dst string, dstIsDir bool, src string) string {
	if !dstIsDir && !strings.HasSuffix(dst, "/") {
		return dst
	}
	base := path.Base(strings.TrimRight(src, "/"))
	if base == "/" || base == "." || base == "" {
		return dst
	}
	return path.Join(dst, base)
}

func splitRemote(s string) (name, path string, remote bool) {
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.Contains(s[:i], "/") {
		return s[:i], s[i+1:], true
	}
	return "", s, false
}
