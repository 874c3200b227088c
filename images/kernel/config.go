package kernel

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

var notSet = regexp.MustCompile(`^# (CONFIG_\w+) is not set$`)

// ParseConfig reads a .config or a fragment into symbol → value, with
// "is not set" and "=n" both mapped to "n".
func ParseConfig(data string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if sm := notSet.FindStringSubmatch(line); sm != nil {
			m[sm[1]] = "n"
			continue
		}
		if !strings.HasPrefix(line, "CONFIG_") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		m[k] = v
	}
	return m
}

// VerifyConfig checks that every symbol a fragment asks for has that value
// in the final .config. Kconfig silently drops a request whose dependencies
// are unmet; the lab must not boot a kernel missing something a check needs.
func VerifyConfig(final string, fragments []string) error {
	b, err := os.ReadFile(final)
	if err != nil {
		return err
	}
	have := ParseConfig(string(b))
	var bad []string
	for _, f := range fragments {
		fb, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for k, want := range ParseConfig(string(fb)) {
			got, ok := have[k]
			if !ok {
				got = "n"
			}
			if got != want {
				bad = append(bad, fmt.Sprintf("%s=%s requested by images/config/%s, but the final config has %s (unmet dependency or unknown symbol)", k, want, filepath.Base(f), got))
			}
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("kernel config does not satisfy the lab's fragments:\n  %s", strings.Join(bad, "\n  "))
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
