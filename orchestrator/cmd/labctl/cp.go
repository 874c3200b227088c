package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"ldtlab/guest/agent/boot"
	"ldtlab/internal/shquote"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/channel"
)

// The cp verb copies files to or from a guest over SFTP. The guest is not
// trusted (README, "labctl cp"): what it sends lands inside the copy and
// nowhere else, without setuid/setgid/sticky bits unless asked, and its
// symlinks are recreated only when they cannot lead out of the copy.
func init() {
	var (
		preserve bool
		maxSize  string
	)
	register(&command{
		name:    "cp",
		args:    "SRC DST",
		summary: "copy files or directories to or from a guest; write the guest side as NAME:PATH (relative: in the guest's home; NAME: alone is the home)",
		help: "Permission bits are copied; setuid, setgid and sticky bits only with\n" +
			"--preserve-special-bits. From the guest, nothing is written or chmodded\n" +
			"through a symlink or outside the copy, and a guest symlink is recreated\n" +
			"only if its target is relative and stays inside the copy (others are\n" +
			"skipped with a warning). Host symlinks are sent as symlinks.",
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&preserve, "preserve-special-bits", false, "also copy setuid, setgid and sticky bits (off: a guest file cannot become a setuid binary of yours)")
			fs.StringVar(&maxSize, "max-size", "", "stop once this much file content was copied (e.g. 2G); default: no limit")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 2 {
				return usagef(fs, "need SRC and DST")
			}
			opts, err := copyOptions(preserve, maxSize, os.Stderr)
			if err != nil {
				return err
			}
			sn, sp, sRemote := splitRemote(args[0])
			dn, dp, dRemote := splitRemote(args[1])
			switch {
			case sRemote && !dRemote && sp == "":
				return usageError{fmt.Errorf("%s: name the guest file or directory to copy (%s:PATH; a relative PATH is in the guest's home directory)", args[0], sn)}
			case sRemote && !dRemote:
				c, err := connect(ctx, sn)
				if err != nil {
					return err
				}
				defer c.Close()
				st, err := os.Stat(dp)
				dp = copyTarget(dp, err == nil && st.IsDir(), sp)
				if err := c.Download(ctx, sp, dp, opts); err != nil {
					return explainVM(sn, copyLimit(err))
				}
				return nil
			case dRemote && !sRemote:
				c, err := connect(ctx, dn)
				if err != nil {
					return err
				}
				defer c.Close()
				// Is the guest path a directory? "NAME:" is the guest's
				// home, as for scp; otherwise ask the guest's shell.
				isDir := dp == ""
				if !isDir && !strings.HasSuffix(dp, "/") {
					code, err := c.Run(ctx, "test -d "+shquote.Always(dp), channel.RunOptions{})
					if err != nil {
						return explainVM(dn, err)
					}
					isDir = code == 0
				}
				if err := c.Upload(ctx, sp, copyTarget(dp, isDir, sp), opts); err != nil {
					return explainVM(dn, copyLimit(err))
				}
				return nil
			default:
				return usageError{errors.New("exactly one of SRC and DST must be NAME:PATH")}
			}
		},
	})
}

// copyOptions turns cp's flags into channel.CopyOptions: warnings (skipped
// guest symlinks) and progress go to w, progress at most every 5 seconds
// so that a guest filling the disk shows.
func copyOptions(preserve bool, maxSize string, w io.Writer) (channel.CopyOptions, error) {
	o := channel.CopyOptions{
		PreserveSpecialBits: preserve,
		// Guest names and symlink targets: control characters escaped.
		Warn: func(msg string) { fmt.Fprintf(w, "labctl cp: warning: %s\n", termsafe.Line(msg)) },
	}
	if maxSize != "" {
		n, err := boot.ParseSize(maxSize)
		if err != nil || n == 0 {
			return o, usageError{fmt.Errorf("--max-size %s: want a size such as 500M or 2G", maxSize)}
		}
		o.MaxBytes = n
	}
	start := time.Now()
	next := start.Add(progressEvery)
	o.Progress = func(p channel.Progress) {
		if now := time.Now(); now.After(next) {
			next = now.Add(progressEvery)
			fmt.Fprintf(w, "labctl cp: %d files, %s so far\n", p.Files, rate(p.Bytes, now.Sub(start)))
		}
	}
	return o, nil
}

// progressEvery is how often a long copy says how far it got.
const progressEvery = 5 * time.Second

// rate is "12.0 MiB (2.4 MiB/s)".
func rate(n int64, d time.Duration) string {
	mib := float64(n) / (1 << 20)
	if d <= 0 {
		return fmt.Sprintf("%.1f MiB", mib)
	}
	return fmt.Sprintf("%.1f MiB (%.1f MiB/s)", mib, mib/d.Seconds())
}

// copyLimit names the flag behind a copy stopped at its size limit.
func copyLimit(err error) error {
	if errors.Is(err, channel.ErrCopyLimit) {
		return fmt.Errorf("%w (--max-size)", err)
	}
	return err
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
