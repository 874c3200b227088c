package soak

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/internal/atomicfile"
	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
)

// JournalName is the append-only record of a soak in its directory.
const JournalName = "journal.jsonl"

// Record is one line of the journal. Exactly one of the pointers is set,
// named by Type.
type Record struct {
	Type    string    `json:"type"` // start | cell | round | lab-failure | coverage | end
	At      time.Time `json:"at"`
	Session int       `json:"session"`

	Start      *Start       `json:"start,omitempty"`
	Cell       *CellRecord  `json:"cell,omitempty"`
	Round      *RoundRecord `json:"round,omitempty"`
	LabFailure *LabFailure  `json:"lab_failure,omitempty"`
	End        *End         `json:"end,omitempty"`
	// Coverage: a point of the coverage curve (--config coverage only;
	// journals before it have none).
	Coverage *CoveragePoint `json:"coverage,omitempty"`
}

// Start opens a session: the first one fixes the soak's options, a
// resumed one repeats them.
type Start struct {
	Options   Options    `json:"options"`
	Kernel    string     `json:"kernel,omitempty"`     // release
	KernelKey string     `json:"kernel_key,omitempty"` // build cache key
	Accel     string     `json:"accel,omitempty"`
	Catalogue []Scenario `json:"catalogue,omitempty"`
	Resumed   bool       `json:"resumed,omitempty"`
	Host      string     `json:"host,omitempty"`
	Env       *Env       `json:"env,omitempty"` // commit, series, QEMU, accelerator, host (journals before it have none)
}

// End closes a session cleanly (deadline, SIGINT); a killed session has none.
type End struct {
	Reason string `json:"reason"`
	Load   string `json:"load,omitempty"` // the host's load average at the end
}

// Journal appends records, each synced before Append returns.
type Journal struct {
	mu   sync.Mutex
	f    *os.File
	lock *os.File
	path string
}

// ErrLocked: another soak holds the directory.
var ErrLocked = errors.New("another soak is running in this directory")

// OpenJournal locks dir for this process (flock on DIR/soak.lock, held
// until Close) and opens its journal for appending, creating both. dir
// is created 0700 when missing; an existing one must be ours and not
// writable by others (a replay directory someone else prepared, or a
// symlink to one, is refused), and nothing in it is opened through a
// symlink.
func OpenJournal(dir string) (*Journal, error) {
	if err := secfs.MkdirPrivate(dir, 0o700); err != nil {
		return nil, fmt.Errorf("soak directory: %w", err)
	}
	lockPath := filepath.Join(dir, "soak.lock")
	lf, err := secfs.OpenIn(dir, "soak.lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the soak lock: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		pid := strings.TrimSpace(readSmall(lockPath))
		return nil, fmt.Errorf("%s (pid %s holds %s): %w", dir, pid, lockPath, ErrLocked)
	}
	// The pid is informational (status says who runs); the flock is the lock.
	lf.Truncate(0)
	lf.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	path := filepath.Join(dir, JournalName)
	_, statErr := os.Lstat(path)
	f, err := secfs.OpenIn(dir, JournalName, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("opening the journal: %w", fileutil.Explain(path, err))
	}
	if err := ownedByUs(f); err != nil {
		f.Close()
		lf.Close()
		return nil, err
	}
	if os.IsNotExist(statErr) {
		// A new file's name must survive a crash too.
		if err := atomicfile.SyncDir(dir); err != nil {
			f.Close()
			lf.Close()
			return nil, err
		}
	}
	if err := dropTornTail(f, dir); err != nil {
		f.Close()
		lf.Close()
		return nil, err
	}
	return &Journal{f: f, lock: lf, path: path}, nil
}

// ownedByUs refuses a journal another user owns: its options (which
// libvirt hosts to connect to, what to inject) are not ours to follow.
func ownedByUs(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by this user (uid %d): refusing to continue a soak from it", f.Name(), sys.Uid, os.Geteuid())
	}
	return nil
}

// dropTornTail ends the file with a newline if a killed writer left half
// a line, so the next record starts on its own line (the torn one is
// ignored by Replay).
func dropTornTail(f *os.File, dir string) error {
	path := filepath.Join(dir, JournalName)
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err
	}
	r, err := secfs.OpenIn(dir, JournalName, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	b := make([]byte, 1)
	if _, err := r.ReadAt(b, st.Size()-1); err != nil {
		return err
	}
	if b[0] != '\n' {
		if _, err := f.Write([]byte("\n")); err != nil {
			return fmt.Errorf("closing a torn journal line: %w", fileutil.Explain(path, err))
		}
		return f.Sync()
	}
	return nil
}

// Append writes one record and syncs it to disk.
func (j *Journal) Append(r Record) error {
	if r.At.IsZero() {
		r.At = time.Now().UTC()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("appending to the journal: %w", fileutil.Explain(j.path, err))
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("syncing the journal: %w", fileutil.Explain(j.path, err))
	}
	return nil
}

// Close releases the journal and the directory lock.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	err := j.f.Close()
	j.lock.Close()
	return err
}

// Replay reads dir's journal. A last line cut short by a kill is ignored;
// a damaged line elsewhere is an error (the journal is synced record by
// record, so only the tail can be torn).
//
// The journal is read as a regular file of at most maxJournal bytes,
// never through a symlink: one that points at /dev/zero or at another
// user's file is refused.
func Replay(dir string) ([]Record, error) {
	path := filepath.Join(dir, JournalName)
	b, err := secfs.ReadFileIn(dir, JournalName, maxJournal)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: no soak journal here (%s missing)", dir, JournalName)
		}
		return nil, fmt.Errorf("reading the soak journal: %w", err)
	}
	var out []Record
	lines := bytes.Split(b, []byte("\n"))
	for i, l := range lines {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(l, &r); err != nil {
			if isTornTail(lines, i) {
				continue
			}
			return out, fmt.Errorf("%s line %d is damaged (%v): not a torn tail, so the journal was changed by something else", path, i+1, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// isTornTail: line i is the last non-empty line, or was closed by
// dropTornTail on a resume (then only blank-separated records follow it
// and it has no closing brace).
func isTornTail(lines [][]byte, i int) bool {
	for _, l := range lines[i+1:] {
		if len(bytes.TrimSpace(l)) != 0 {
			return !bytes.HasSuffix(bytes.TrimSpace(lines[i]), []byte("}")) && bytes.HasPrefix(bytes.TrimSpace(l), []byte(`{"type":"start"`))
		}
	}
	return true
}

// maxJournal bounds the journal Replay reads (a night's soak writes a
// few MiB).
var maxJournal int64 = 1 << 30

// readSmall reads the first bytes of a small file (a pid), never through
// a symlink, never from a FIFO or a device.
func readSmall(path string) string {
	f, err := secfs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 64))
	return string(b)
}
