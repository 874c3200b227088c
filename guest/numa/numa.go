// Package numa is the guest's NUMA nodes as the lab uses them: how many are
// online (numa=fake=N makes them), and move_pages(2) on this process's
// pages, which migration scenarios, agitators, fuzz operations and checks
// share.
package numa

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Nodes is the number of online NUMA nodes (1 when the kernel does not say).
func Nodes() int {
	b, err := os.ReadFile("/sys/devices/system/node/online")
	if err != nil {
		return 1
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return max(n, 1)
		}
		c := a
		if ok {
			if c, err = strconv.Atoi(hi); err != nil || c < a {
				return max(n, 1)
			}
		}
		n += c - a + 1
	}
	return max(n, 1)
}

// Move asks the kernel to move the pages at addrs (each with its whole
// folio) to node with MPOL_MF_MOVE. status[i] is the node page i is on
// afterwards, or a negative errno for that page (-ENOENT: not present).
func Move(addrs []uintptr, node int) (status []int32, err error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	dst := make([]int32, len(addrs))
	for i := range dst {
		dst[i] = int32(node)
	}
	status = make([]int32, len(addrs))
	_, _, e := unix.Syscall6(unix.SYS_MOVE_PAGES, 0, uintptr(len(addrs)), uintptr(unsafe.Pointer(&addrs[0])),
		uintptr(unsafe.Pointer(&dst[0])), uintptr(unsafe.Pointer(&status[0])), unix.MPOL_MF_MOVE)
	if e != 0 {
		return status, fmt.Errorf("move_pages to node %d: %w", node, e)
	}
	return status, nil
}

// Where is the node each page at addrs is on (move_pages with no target),
// or a negative errno for that page.
func Where(addrs []uintptr) (status []int32, err error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	status = make([]int32, len(addrs))
	_, _, e := unix.Syscall6(unix.SYS_MOVE_PAGES, 0, uintptr(len(addrs)), uintptr(unsafe.Pointer(&addrs[0])),
		0, uintptr(unsafe.Pointer(&status[0])), 0)
	if e != 0 {
		return status, fmt.Errorf("move_pages (query): %w", e)
	}
	return status, nil
}
