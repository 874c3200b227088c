package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// The kernel does not act on an ACPI power button press by itself: the
// button driver only reports it (input event and the "acpi_event" generic
// netlink family) for acpid to handle. PID 1 is our acpid, so it listens on
// that family. This file holds the wire parsing, which is host-testable.

const (
	acpiFamilyName = "acpi_event"
	acpiGroupName  = "acpi_mc_group"
	acpiAttrEvent  = 1 // ACPI_GENL_ATTR_EVENT
	// Layout of struct acpi_genl_event: char device_class[20], char
	// bus_id[15], then (4-aligned) u32 type, u32 data.
	acpiClassLen   = 20
	acpiBusLen     = 15
	acpiEventSize  = 44
	nlAttrTypeMask = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// ACPIEvent is one event of the acpi_event netlink family.
type ACPIEvent struct {
	DeviceClass string // e.g. "button/power"
	BusID       string // e.g. "LNXPWRBN:00"
	Type, Data  uint32
}

// IsPowerButton reports whether e is a power button press.
func (e ACPIEvent) IsPowerButton() bool { return e.DeviceClass == "button/power" }

// nlAttrs splits netlink attributes into type -> payload.
func nlAttrs(b []byte) (map[uint16][]byte, error) {
	attrs := map[uint16][]byte{}
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlAttrTypeMask
		if l < 4 || l > len(b) {
			return nil, errors.New("malformed netlink attribute")
		}
		attrs[typ] = b[4:l]
		next := (l + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return attrs, nil
}

// nlAttr encodes one attribute, padded to 4 bytes.
func nlAttr(typ uint16, payload []byte) []byte {
	b := make([]byte, (4+len(payload)+3)&^3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(payload)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[4:], payload)
	return b
}

// genlFamilyInfo extracts the family id and the id of multicast group
// group from a CTRL_CMD_NEWFAMILY payload (after the genl header).
func genlFamilyInfo(payload []byte, group string) (family uint16, groupID uint32, err error) {
	attrs, err := nlAttrs(payload)
	if err != nil {
		return 0, 0, err
	}
	id, ok := attrs[1] // CTRL_ATTR_FAMILY_ID
	if !ok || len(id) < 2 {
		return 0, 0, errors.New("no family id in reply")
	}
	family = binary.NativeEndian.Uint16(id)
	groups, err := nlAttrs(attrs[7]) // CTRL_ATTR_MCAST_GROUPS: nested, one per group
	if err != nil {
		return 0, 0, err
	}
	for _, g := range groups {
		ga, err := nlAttrs(g)
		if err != nil {
			return 0, 0, err
		}
		name := string(bytes.TrimRight(ga[1], "\x00")) // CTRL_ATTR_MCAST_GRP_NAME
		if name == group && len(ga[2]) >= 4 {          // CTRL_ATTR_MCAST_GRP_ID
			return family, binary.NativeEndian.Uint32(ga[2]), nil
		}
	}
	return 0, 0, fmt.Errorf("no multicast group %q", group)
}

// parseACPIEvent decodes the payload (after the genl header) of an
// acpi_event message.
func parseACPIEvent(payload []byte) (ACPIEvent, error) {
	attrs, err := nlAttrs(payload)
	if err != nil {
		return ACPIEvent{}, err
	}
	b, ok := attrs[acpiAttrEvent]
	if !ok || len(b) < acpiEventSize {
		return ACPIEvent{}, errors.New("short acpi event")
	}
	cstr := func(b []byte) string {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return string(b)
	}
	return ACPIEvent{
		DeviceClass: cstr(b[:acpiClassLen]),
		BusID:       cstr(b[acpiClassLen : acpiClassLen+acpiBusLen]),
		Type:        binary.NativeEndian.Uint32(b[36:40]),
		Data:        binary.NativeEndian.Uint32(b[40:44]),
	}, nil
}
