package pagemap

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Smaps is the kB fields ("AnonHugePages", "ShmemPmdMapped", ...) of the
// VMA of this process that contains addr, from /proc/self/smaps: how the
// kernel maps it, which pagemap's per-page flags do not say.
func Smaps(addr uintptr) (map[string]int, error) {
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil, err
	}
	return parseSmaps(string(data), addr)
}

// SmapsKB is one field of Smaps, in kB.
func SmapsKB(addr uintptr, field string) (int, error) {
	f, err := Smaps(addr)
	if err != nil {
		return 0, err
	}
	kb, ok := f[field]
	if !ok {
		return 0, fmt.Errorf("no %s in smaps for the VMA at %#x", field, addr)
	}
	return kb, nil
}

func parseSmaps(text string, addr uintptr) (map[string]int, error) {
	var out map[string]int
	for _, line := range strings.Split(text, "\n") {
		// A VMA's header is "lo-hi perms ..."; its fields are "Name: N kB".
		if lo, rest, ok := strings.Cut(line, "-"); ok && !strings.Contains(lo, ":") && !strings.HasSuffix(lo, " ") {
			hi, _, _ := strings.Cut(rest, " ")
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				if out != nil {
					break
				}
				if uint64(addr) >= l && uint64(addr) < h {
					out = map[string]int{}
				}
				continue
			}
		}
		name, v, ok := strings.Cut(line, ":")
		if out == nil || !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		if kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(v, " kB"))); err == nil {
			out[name] = kb
		}
	}
	if out == nil {
		return nil, fmt.Errorf("no VMA at %#x in smaps", addr)
	}
	return out, nil
}
