package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"ldtlab/orchestrator/report"
)

// CrashedDir is where the last failed guest of a name keeps its console
// and reports after `down` or a new `up` of that name removed its VM
// directory, until the user removes it.
func CrashedDir(name string) (string, error) {
	state, err := StateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(state, "crashed", name), nil
}

// maxKeptParse bounds how much of a console is parsed for reports.
const maxKeptParse = 16 << 20

// KeepCrashed moves the console logs, state and supervisor log of the VM
// in dir to CrashedDir(name), with the kernel reports found written to
// reports.txt, when the guest failed (state "failed", or dead while it
// should run) or its console holds a kernel report. It returns where they
// went and how many reports there were; "" when there was nothing to keep.
// The previous crash of that name is replaced.
func KeepCrashed(name, dir string) (string, int, error) {
	st, _ := ReadState(dir)
	failed := st != nil && (st.Status == StatusFailed ||
		(!st.Alive() && (st.Status == StatusRunning || st.Status == StatusBooting)))
	reps := consoleReports(filepath.Join(dir, "console.log"))
	if !failed && len(reps) == 0 {
		return "", 0, nil
	}
	dst, err := CrashedDir(name)
	if err != nil {
		return "", 0, err
	}
	// state/crashed: ours and private, like the VM directories.
	if err := MkdirState(filepath.Dir(dst), 0o700); err != nil {
		return "", 0, fmt.Errorf("keeping the console of %s: %w", name, err)
	}
	tmp := dst + ".new"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", 0, fmt.Errorf("keeping the console of %s: %w", name, err)
	}
	for _, f := range []string{"console.log", "console.log.1", "state.json", "supervisor.log"} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(tmp, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", 0, fmt.Errorf("keeping %s of %s: %w", f, name, err)
		}
	}
	var b strings.Builder
	if st != nil && st.Error != "" {
		fmt.Fprintf(&b, "guest %s: %s (%s)\n\n", name, st.Status, st.Error)
	}
	fmt.Fprintf(&b, "%d kernel report(s) in console.log\n", len(reps))
	for i, r := range reps {
		fmt.Fprintf(&b, "--- report %d: %s\n%s\n", i+1, r, strings.TrimRight(r.Text, "\n"))
	}
	if err := os.WriteFile(filepath.Join(tmp, "reports.txt"), []byte(b.String()), 0o600); err != nil {
		return "", 0, fmt.Errorf("keeping the reports of %s: %w", name, err)
	}
	if err := os.RemoveAll(dst); err != nil {
		return "", 0, fmt.Errorf("replacing %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", 0, fmt.Errorf("keeping the console of %s: %w", name, err)
	}
	return dst, len(reps), nil
}

// consoleReports parses the newest maxKeptParse bytes of a console log.
func consoleReports(path string) []report.Report {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil
	}
	off := max(st.Size()-maxKeptParse, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil
	}
	return report.Parse(data)
}
