package soak

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"ldtlab/internal/atomicfile"
	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
)

// Kept occurrences of one crash: the first keepFirst and the last
// keepLast in full; the ones between are counted only (bounded disk).
const (
	keepFirst = 3
	keepLast  = 3
	// maxLog bounds the console log kept per occurrence (its tail).
	maxLog = 2 << 20
	// maxSpan bounds an occurrence's report text.
	maxSpan = 1 << 20
	// maxCrashJSON bounds the crash.json read back.
	maxCrashJSON = 4 << 20
)

// maxTitles bounds the distinct titles filed: a guest that makes up a new
// title for every report must not fill the disk (each title keeps up to
// keepFirst+keepLast logs of maxLog). Past it, new titles are counted
// under one "other" entry per kind, each occurrence's report.txt naming
// its own title.
var maxTitles = 200

// overflowTitle files the titles past maxTitles.
func overflowTitle(kind string) string {
	return fmt.Sprintf("other: %s reports past the first %d distinct titles (each occurrence's report.txt names its own)", kind, maxTitles)
}

// Crash is one finding, deduplicated by title: DIR/crashes/<hash>/crash.json.
type Crash struct {
	Title string `json:"title"`
	Type  string `json:"type"` // the report type (warning, panic, ...), hang, boot, lost-pages, corrupted-pages
	// Kind: kernel (a kernel report), hang, boot, correctness (missed or
	// corrupted pages).
	Kind string `json:"kind"`
	// Known: why this report is a known kernel bug outside LDT (kind known).
	Known     string    `json:"known,omitempty"`
	Count     int       `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Of the first occurrence: its round's seed replays it.
	FirstRound int    `json:"first_round"`
	Seed       uint64 `json:"seed"`
	Kernel     string `json:"kernel"`     // release
	KernelKey  string `json:"kernel_key"` // build cache key
	Repro      string `json:"repro"`      // one line
	// Reproduced: correctness failures are re-run once from their seed.
	Reproduced map[string]int `json:"reproduced,omitempty"` // yes | no | not-rerun → count
	Kept       []int          `json:"kept"`                 // occurrence numbers whose logs are on disk
	Dir        string         `json:"-"`
}

// Occurrence is one sighting to record.
type Occurrence struct {
	Title, Type, Kind string
	Known             string
	At                time.Time
	Round, Worker     int
	Seed              uint64 // the round's
	Kernel, KernelKey string
	Repro             string
	Step              Step
	Span              string // the report's text (console span) or the failure's description
	Log               []byte // the guest's console log so far
	Reproduced        string // correctness: yes | no
	Dump              []byte // a hang's sysrq-t/w dump (N/sysrq.txt)
	// Files are kept beside crash.json, once per title (a fuzz finding's
	// replay.json: the first occurrence's stays, so the reproduction
	// command that names it keeps working).
	Files map[string][]byte
}

// Store is DIR/crashes.
type Store struct {
	mu     sync.Mutex
	dir    string
	titles int // title directories in dir
}

// OpenStore opens (creating) dir/crashes; a symlink in its place is
// refused.
func OpenStore(dir string) (*Store, error) {
	d := filepath.Join(dir, "crashes")
	if err := secfs.Mkdir(d, 0o755); err != nil {
		return nil, fmt.Errorf("creating the crash store: %w", fileutil.Explain(d, err))
	}
	ents, err := os.ReadDir(d)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() {
			n++
		}
	}
	return &Store{dir: d, titles: n}, nil
}

// TitleDir is where title's crash is (or will be) kept.
func (s *Store) TitleDir(title string) string { return filepath.Join(s.dir, TitleHash(title)) }

// TitleHash names a title's directory.
func TitleHash(title string) string {
	h := sha256.Sum256([]byte(title))
	return hex.EncodeToString(h[:8])
}

// Record adds one occurrence and returns the crash as it now stands.
func (s *Store) Record(o Occurrence) (Crash, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(o.Span) > maxSpan {
		o.Span = o.Span[:maxSpan] + fmt.Sprintf("\n[soak: %d more bytes of the report dropped]\n", len(o.Span)-maxSpan)
	}
	d := filepath.Join(s.dir, TitleHash(o.Title))
	if _, err := os.Lstat(d); os.IsNotExist(err) && s.titles >= maxTitles {
		o.Span = "title: " + o.Title + "\n\n" + o.Span
		o.Title = overflowTitle(o.Kind)
		d = filepath.Join(s.dir, TitleHash(o.Title))
	}
	c, err := readCrash(d)
	if os.IsNotExist(err) {
		if _, err := os.Lstat(d); os.IsNotExist(err) {
			s.titles++
		}
		if err := secfs.Mkdir(d, 0o755); err != nil {
			return c, fmt.Errorf("recording crash %q: %w", o.Title, fileutil.Explain(d, err))
		}
		if err := atomicfile.SyncDir(s.dir); err != nil {
			return c, err
		}
		c = Crash{Title: o.Title, Type: o.Type, Kind: o.Kind, FirstSeen: o.At, FirstRound: o.Round, Seed: o.Seed,
			Kernel: o.Kernel, KernelKey: o.KernelKey, Repro: o.Repro, Known: o.Known}
		if err := writeAtomic(filepath.Join(d, "title"), []byte(o.Title+"\n")); err != nil {
			return c, err
		}
	} else if err != nil {
		return c, fmt.Errorf("reading crash %s: %w", d, err)
	}
	for name, b := range o.Files {
		if name != filepath.Base(name) || name == "crash.json" || name == "title" || name == "" || name[0] == '.' {
			return c, fmt.Errorf("recording crash %q: bad file name %q", o.Title, name)
		}
		p := filepath.Join(d, name)
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			if err := writeAtomic(p, b); err != nil {
				return c, err
			}
		}
	}
	c.Count++
	c.LastSeen = o.At
	if o.Reproduced != "" {
		if c.Reproduced == nil {
			c.Reproduced = map[string]int{}
		}
		c.Reproduced[o.Reproduced]++
	}
	n := c.Count
	od := filepath.Join(d, strconv.Itoa(n))
	if err := secfs.Mkdir(od, 0o755); err != nil {
		return c, fmt.Errorf("recording crash %q: %w", o.Title, fileutil.Explain(od, err))
	}
	log := o.Log
	if len(log) > maxLog {
		log = append([]byte(fmt.Sprintf("[soak: %d earlier bytes of the console dropped]\n", len(log)-maxLog)), log[len(log)-maxLog:]...)
	}
	meta, _ := json.MarshalIndent(map[string]any{
		"title": o.Title, "at": o.At, "round": o.Round, "worker": o.Worker, "round_seed": o.Seed,
		"step": o.Step, "repro": o.Repro, "reproduced": o.Reproduced,
	}, "", "  ")
	files := map[string][]byte{"report.txt": []byte(o.Span), "console.log": log, "occurrence.json": meta}
	if len(o.Dump) > 0 {
		files["sysrq.txt"] = o.Dump
	}
	for name, b := range files {
		if err := writeAtomic(filepath.Join(od, name), b); err != nil {
			return c, err
		}
	}
	c.Kept = append(c.Kept, n)
	// Keep the first few and the last few: drop the one that just left
	// the "last" window.
	if drop := n - keepLast; drop > keepFirst {
		os.RemoveAll(filepath.Join(d, strconv.Itoa(drop)))
		var kept []int
		for _, k := range c.Kept {
			if k != drop {
				kept = append(kept, k)
			}
		}
		c.Kept = kept
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	if err := writeAtomic(filepath.Join(d, "crash.json"), b); err != nil {
		return c, err
	}
	c.Dir = d
	return c, nil
}

// readCrash reads d/crash.json, following no symlink: neither d nor
// crash.json may be one (a planted link to a file outside the soak would
// copy it into the report).
func readCrash(d string) (Crash, error) {
	var c Crash
	// d is SOAK/crashes/HASH: nothing below SOAK is followed.
	soak := filepath.Dir(filepath.Dir(d))
	b, err := secfs.ReadFileIn(soak, filepath.Join(filepath.Base(filepath.Dir(d)), filepath.Base(d), "crash.json"), maxCrashJSON)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, err
	}
	c.Dir = d
	return c, nil
}

// Crashes lists dir's crashes, most frequent first.
//
// Nothing below dir is read through a symlink.
func Crashes(dir string) ([]Crash, error) {
	f, err := secfs.OpenIn(dir, "crashes", os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	var out []Crash
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		c, err := readCrash(filepath.Join(dir, "crashes", e.Name()))
		if err != nil {
			continue // created, killed before its first crash.json: nothing recorded
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Title < out[j].Title
	})
	return out, nil
}

// writeAtomic: temp file, fsync, rename, fsync of the directory
// (internal/atomicfile, with the cache's "no space left on" wording).
func writeAtomic(path string, b []byte) error {
	if err := fileutil.WriteFileAtomic(path, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// LabFailure is a failure of the lab, not the kernel: QEMU exited or was
// killed without a kernel report, the channel broke, the host disk filled.
// Kept in DIR/lab-failures/, never counted as a kernel bug.
type LabFailure struct {
	Round  int    `json:"round"`
	Worker int    `json:"worker"`
	Step   *Step  `json:"step,omitempty"`
	Phase  string `json:"phase"` // boot | step
	Error  string `json:"error"`
}

func recordLabFailure(dir string, at time.Time, lf LabFailure, log []byte) error {
	d := filepath.Join(dir, "lab-failures")
	if err := secfs.Mkdir(d, 0o755); err != nil {
		return err
	}
	name := fmt.Sprintf("%s-r%d-w%d", at.UTC().Format("20060102T150405.000"), lf.Round, lf.Worker)
	b, _ := json.MarshalIndent(lf, "", "  ")
	if err := writeAtomic(filepath.Join(d, name+".json"), b); err != nil {
		return err
	}
	// Bounded disk: the logs of the first 100 lab failures only.
	if n, _ := os.ReadDir(d); len(log) > 0 && len(n) < 200 {
		if len(log) > 256<<10 {
			log = log[len(log)-256<<10:]
		}
		return writeAtomic(filepath.Join(d, name+".console.log"), log)
	}
	return nil
}
