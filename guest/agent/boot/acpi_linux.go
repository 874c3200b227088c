package boot

import (
	"encoding/binary"
	"fmt"

	"syscall"

	"golang.org/x/sys/unix"
)

// WatchACPI calls fn for every ACPI event the kernel broadcasts. It returns
// an error if the listener cannot be set up (no CONFIG_NET, no ACPI), and
// otherwise runs until the socket fails.
func WatchACPI(fn func(ACPIEvent)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}

	// CTRL_CMD_GETFAMILY "acpi_event" to learn the multicast group id.
	genl := []byte{unix.CTRL_CMD_GETFAMILY, 1, 0, 0}
	body := append(genl, nlAttr(unix.CTRL_ATTR_FAMILY_NAME, append([]byte(acpiFamilyName), 0))...)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:4], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:6], unix.GENL_ID_CTRL)
	binary.NativeEndian.PutUint16(msg[6:8], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(msg[8:12], 1)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink getfamily: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("netlink getfamily reply: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil || len(msgs) == 0 {
		return fmt.Errorf("netlink getfamily reply: %v", err)
	}
	if msgs[0].Header.Type == unix.NLMSG_ERROR {
		return fmt.Errorf("no %s netlink family (kernel without ACPI?)", acpiFamilyName)
	}
	if len(msgs[0].Data) < genlHdrLen {
		return fmt.Errorf("short getfamily reply")
	}
	_, group, err := genlFamilyInfo(msgs[0].Data[genlHdrLen:], acpiGroupName)
	if err != nil {
		return fmt.Errorf("acpi_event family: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(group)); err != nil {
		return fmt.Errorf("joining acpi_event group: %w", err)
	}

	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR || err == unix.ENOBUFS {
			continue
		}
		if err != nil {
			return fmt.Errorf("acpi_event: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if len(m.Data) < genlHdrLen {
				continue
			}
			if ev, err := parseACPIEvent(m.Data[genlHdrLen:]); err == nil {
				fn(ev)
			}
		}
	}
}

// genlHdrLen is sizeof(struct genlmsghdr): cmd, version, reserved u16.
const genlHdrLen = 4
