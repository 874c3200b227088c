package coverage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"ldtlab/internal/fileutil"
)

// LoadReasons reads a reasons file (docs/coverage.reasons). A missing file
// is no reasons unless required; a read error says which file.
func LoadReasons(path string, required bool) ([]Reason, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	reasons, err := ParseReasons(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return reasons, nil
}

// WriteReport explains r's unexecuted lines with reasons and writes
// DIR/coverage.json and DIR/coverage.md, each atomically.
func WriteReport(dir string, r *Report, reasons []Reason) error {
	Explain(r, reasons)
	if err := fileutil.WriteJSON(filepath.Join(dir, "coverage.json"), r); err != nil {
		return err
	}
	var md bytes.Buffer
	Markdown(&md, r)
	return fileutil.WriteFileAtomic(filepath.Join(dir, "coverage.md"), md.Bytes(), 0o644)
}
