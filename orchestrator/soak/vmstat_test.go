package soak

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A real sample's shape: /proc/vmstat lines, then ksmd's sysfs counters.
const vmstatSample = `nr_free_pages 120034
nr_zone_inactive_anon 1544
pswpin 12
pswpout 340
thp_fault_alloc 7
thp_split_pmd 3
numa_hint_faults 0
compact_isolated 96
pgmigrate_success 48
cow_ksm 2
pgsteal_kswapd 500
sys_ksm_full_scans 4
sys_ksm_pages_sharing 30
`

func TestParseVMStat(t *testing.T) {
	cases := []struct {
		name, text string
		want       VMStat
		err        string
	}{
		{"kept counters only", vmstatSample, VMStat{"pswpin": 12, "pswpout": 340, "thp_fault_alloc": 7, "thp_split_pmd": 3, "numa_hint_faults": 0,
			"compact_isolated": 96, "pgmigrate_success": 48, "cow_ksm": 2, "pgsteal_kswapd": 500, "sys_ksm_full_scans": 4, "sys_ksm_pages_sharing": 30}, ""},
		{"no counter at all", "nr_free_pages 1\n", nil, "no vmstat counter"},
		{"a damaged value", "pswpin x\n", nil, `vmstat line "pswpin x"`},
		{"odd lines are skipped", "pswpin 1\ngarbage\n\npswpout 2 3\n", VMStat{"pswpin": 1}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseVMStat(c.text)
			if c.err != "" {
				assert.ErrorContains(t, err, c.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestVMStatDelta(t *testing.T) {
	cases := []struct {
		name          string
		before, after VMStat
		want          VMStat
		err           string
	}{
		{"only what moved", VMStat{"pswpout": 10, "thp_split_pmd": 2}, VMStat{"pswpout": 30, "thp_split_pmd": 2}, VMStat{"pswpout": 20}, ""},
		{"nothing moved", VMStat{"pswpout": 10}, VMStat{"pswpout": 10}, VMStat{}, ""},
		{"a gauge may fall", VMStat{"sys_ksm_pages_sharing": 30}, VMStat{"sys_ksm_pages_sharing": 5}, VMStat{"sys_ksm_pages_sharing": -25}, ""},
		{"a counter that falls is another boot", VMStat{"pswpout": 10}, VMStat{"pswpout": 3}, nil, "not the same boot"},
		{"a counter new in the second sample is left out", VMStat{"pswpout": 1}, VMStat{"pswpout": 2, "thp_fault_alloc": 9}, VMStat{"pswpout": 1}, ""},
		{"no sample before", nil, VMStat{"pswpout": 1}, nil, "missing sample"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Delta(c.before, c.after)
			if c.err != "" {
				assert.ErrorContains(t, err, c.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
	sum := VMStat{}
	sum.Add(VMStat{"pswpout": 2})
	sum.Add(VMStat{"pswpout": 3, "pswpin": 1})
	assert.Equal(t, VMStat{"pswpout": 5, "pswpin": 1}, sum)
	assert.Equal(t, []string{"pswpin", "pswpout"}, sum.Keys())
}
