package paper

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// GitCommit is HEAD of the repository, with "-dirty" when tracked files
// differ from it; "unknown" outside a git checkout.
func GitCommit(repo string) string {
	out, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "-dirty"
	}
	return c
}

// SeriesSHA256 is the sha256 of the named patches of dir concatenated in
// order: `cat $(cat series) | sha256sum` in kmod/patches. Empty for no
// patches (a vanilla kernel) and "unreadable" when one cannot be read.
func SeriesSHA256(dir string, names []string) string {
	if len(names) == 0 {
		return ""
	}
	h := sha256.New()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "unreadable"
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fileSHA256 is the sha256 of a file, "" when it cannot be read.
func fileSHA256(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// sampleLoad appends the host's 1-minute load average to *dst every
// period until the returned function is called (safe to call twice).
func sampleLoad(period time.Duration, dst *[]float64) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	take := func() {
		if f := strings.Fields(LoadAvg()); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				mu.Lock()
				*dst = append(*dst, v)
				mu.Unlock()
			}
		}
	}
	take()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				take()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}
