package boot

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func u16(v uint16) []byte { b := make([]byte, 2); binary.NativeEndian.PutUint16(b, v); return b }
func u32(v uint32) []byte { b := make([]byte, 4); binary.NativeEndian.PutUint32(b, v); return b }

func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func TestGenlFamilyInfo(t *testing.T) {
	group := func(name string, id uint32) []byte {
		return concat(nlAttr(1, append([]byte(name), 0)), nlAttr(2, u32(id)))
	}
	payload := concat(
		nlAttr(1, u16(0x1c)),
		nlAttr(2, []byte("acpi_event\x00")),
		nlAttr(7|0x8000, concat(nlAttr(1|0x8000, group("other", 3)), nlAttr(2|0x8000, group("acpi_mc_group", 9)))),
	)
	fam, grp, err := genlFamilyInfo(payload, acpiGroupName)
	require.NoError(t, err)
	assert.Equal(t, uint16(0x1c), fam)
	assert.Equal(t, uint32(9), grp)

	_, _, err = genlFamilyInfo(payload, "missing")
	assert.Error(t, err)
	_, _, err = genlFamilyInfo([]byte{0xff, 0, 1, 0}, acpiGroupName)
	assert.Error(t, err)
}

func TestParseACPIEvent(t *testing.T) {
	ev := make([]byte, acpiEventSize)
	copy(ev, "button/power")
	copy(ev[acpiClassLen:], "LNXPWRBN:00")
	copy(ev[36:], u32(0x80))
	copy(ev[40:], u32(1))
	got, err := parseACPIEvent(nlAttr(acpiAttrEvent, ev))
	require.NoError(t, err)
	assert.Equal(t, ACPIEvent{DeviceClass: "button/power", BusID: "LNXPWRBN:00", Type: 0x80, Data: 1}, got)
	assert.True(t, got.IsPowerButton())
	assert.False(t, ACPIEvent{DeviceClass: "button/sleep"}.IsPowerButton())

	_, err = parseACPIEvent(nlAttr(acpiAttrEvent, ev[:10]))
	assert.Error(t, err)
}
