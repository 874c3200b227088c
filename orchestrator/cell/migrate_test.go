package cell

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
)

func migrateGuest(source, restore, check string) *fakeGuest {
	return &fakeGuest{out: map[string]lab.Result{
		"if grep":                 {Stdout: []byte("/mnt/data/ldtlab-migrate\n")},
		"bp=":                     {},
		"set -e":                  {Stdout: []byte("321\n")},
		"ldt-migrate -q -tracker": {Stdout: []byte(source)},
		"ldt-migrate -q -restore": {Stdout: []byte(restore)},
		"d=$(timeout":             {Stdout: []byte(check)},
	}}
}

func sourceJSON(outcome string, swapped, mismatched, differ int) string {
	return fmt.Sprintf(`{"mode":"migrate-source","outcome":%q,"reason":"r","rounds":[{"copied_pages":17000,"swapped_pages":%d},{"copied_pages":900,"reported_pages":880},{"copied_pages":40,"reported_pages":40}],`+
		`"quiesce_output":"digest 8a1f00aa keys 10110","mismatched_pages":%d,"replace":{"pages":17100,"differ":%d,"absent":0},"frozen_ms":2100}`, outcome, swapped, mismatched, differ)
}

const restored = `{"mode":"migrate-restore","outcome":"pass","pid":321}`

func checkOut(digest string) string {
	return "digest " + digest + " keys 10110\nsetget OK yes\nbench 0\nping PONG\n"
}

func TestRunCellMigrate(t *testing.T) {
	warn := report.Report{Type: report.TypeWarning, Title: "WARNING in ldt_collect"}
	cases := []struct {
		name     string
		g        *fakeGuest
		tracker  string
		pressure bool
		want     result.Verdict
		caught   string
	}{
		{"pass", migrateGuest(sourceJSON("pass", 500, 0, 0), restored, checkOut("8a1f00aa")), "ldt", true, result.VPass, ""},
		{"digest differs", migrateGuest(sourceJSON("pass", 500, 0, 0), restored, checkOut("77")), "ldt", true, result.VFail, "digest differs"},
		{"pages differ", migrateGuest(sourceJSON("pass", 500, 3, 3), restored, checkOut("8a1f00aa")), "softdirty", true, result.VFail, "3 pages differ"},
		{"naive caught by pages", migrateGuest(sourceJSON("pass", 500, 2, 2), restored, checkOut("8a1f00aa")), "naive", true, result.VCaught, "CRIU's pages differ"},
		{"naive caught by a crash", migrateGuest(sourceJSON("pass", 500, 0, 0), `{"outcome":"fail","reason":"restored pid 321 died right after the restore (state \"\")"}`, ""), "naive", true, result.VCaught, "died"},
		{"naive caught by no answer", migrateGuest(sourceJSON("pass", 500, 0, 0), restored, "digest no-answer keys x\n"), "naive", true, result.VCaught, "no answer"},
		{"naive without teeth", migrateGuest(sourceJSON("pass", 500, 0, 0), restored, checkOut("8a1f00aa")), "naive", true, result.VNoTeeth, ""},
		{"naive without pressure", migrateGuest(sourceJSON("pass", 0, 0, 0), restored, checkOut("8a1f00aa")), "naive", false, result.VNotCaught, ""},
		{"nothing swapped", migrateGuest(sourceJSON("pass", 0, 0, 0), restored, checkOut("8a1f00aa")), "ldt", true, result.VSkip, ""},
		{"tracker cannot", migrateGuest(sourceJSON("skip", 0, 0, 0), restored, ""), "pagemap-scan", true, result.VNA, ""},
		{"dump failed", migrateGuest(sourceJSON("fail", 0, 0, 0), restored, ""), "ldt", true, result.VFail, ""},
		{"restore failed", migrateGuest(sourceJSON("pass", 500, 0, 0), `{"outcome":"fail","reason":"criu restore: exit status 1"}`, ""), "naive", true, result.VFail, ""},
		{"no result", migrateGuest("boom", restored, ""), "ldt", true, result.VFail, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := RunCell(context.Background(), tc.g, Spec{Kind: KindMigrate, Tracker: tc.tracker, Migrate: MigrateOptions{Rounds: 1, Pressure: tc.pressure}})
			require.NoError(t, err)
			require.NotNil(t, c.Migrate)
			assert.Equal(t, tc.want, c.Verdict, "%+v", c.Migrate)
			assert.Equal(t, tc.want, c.Migrate.Verdict)
			if tc.caught != "" {
				assert.Contains(t, strings.Join(c.Migrate.Caught, ", "), tc.caught)
			}
			assert.Contains(t, c.Migrate.Line(), string(tc.want))
		})
	}
	g := migrateGuest(sourceJSON("pass", 500, 0, 0), restored, checkOut("8a1f00aa"))
	g.reports = []report.Report{warn}
	c, err := RunCell(context.Background(), g, Spec{Kind: KindMigrate, Tracker: "ldt", Migrate: MigrateOptions{Pressure: true}})
	require.NoError(t, err)
	assert.Equal(t, result.VFail, c.Verdict, "a kernel report fails the migration")

	g = migrateGuest(sourceJSON("pass", 500, 0, 0), restored, checkOut("8a1f00aa"))
	c, err = RunCell(context.Background(), g, Spec{Kind: KindMigrate, Tracker: "ldt", Migrate: MigrateOptions{Rounds: 2, Pressure: true}})
	require.NoError(t, err)
	assert.Equal(t, []int{17000, 900, 40}, c.Migrate.Copied)
	assert.EqualValues(t, 17100, c.Pages)
	line := c.Migrate.Line()
	assert.Contains(t, line, "ldt           PASS       rounds 2, pages copied per round 17000 900 40")
	assert.Contains(t, line, "digest 8a1f00aa = 8a1f00aa")
	assert.Contains(t, line, "CRIU 17100 pages: 0 differ")
	assert.Equal(t, "migrate/ldt", Spec{Kind: KindMigrate, Tracker: "ldt"}.Name())
}

func TestParseDigest(t *testing.T) {
	d, n := parseDigest("noise\ndigest 0000000000000000000000000000000000000000 keys 0\n")
	assert.Equal(t, "0000000000000000000000000000000000000000", d)
	assert.Equal(t, 0, n)
	d, n = parseDigest("nothing")
	assert.Equal(t, "", d)
	assert.Equal(t, -1, n)
}

// filesGuest is a fake guest that copies files: the source "has" an
// image directory, the destination records what it received.
type filesGuest struct {
	*fakeGuest
	got []string
}

func (g *filesGuest) Download(_ context.Context, remote, local string) error {
	g.got = append(g.got, "download "+remote)
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(local, "pages-1.img"), make([]byte, 3<<20), 0o644)
}

func (g *filesGuest) Upload(_ context.Context, local, remote string) error {
	g.got = append(g.got, "upload "+remote)
	_, err := os.Stat(filepath.Join(local, "pages-1.img"))
	return err
}

func TestRunMigrateToGuest(t *testing.T) {
	src := &filesGuest{fakeGuest: migrateGuest(sourceJSON("pass", 500, 0, 0), "", "")}
	src.out["ldt-migrate -burn-pids 1150"] = lab.Result{Stdout: []byte("1150\n")}
	dst := &filesGuest{fakeGuest: migrateGuest("", restored, checkOut("8a1f00aa"))}
	dst.out["cut -d"] = lab.Result{Stdout: []byte("150\n")}
	dst.out["rm -rf"] = lab.Result{}
	c := &Cell{}
	require.NoError(t, RunMigrate(context.Background(), src, dst, Spec{Kind: KindMigrate, Tracker: "ldt", Migrate: MigrateOptions{Pressure: true}}, c))
	mg := c.Migrate
	assert.Equal(t, result.VPass, mg.Verdict, "%+v", mg)
	assert.True(t, mg.ToGuest)
	assert.Equal(t, []string{"download /mnt/data/ldtlab-migrate"}, src.got)
	assert.Equal(t, []string{"upload /mnt/data/ldtlab-migrate"}, dst.got)
	assert.InDelta(t, 3.0, mg.TransferMiB, 0.01)
	assert.Contains(t, mg.Line(), "3.0 MiB through the host")

	// Guests that cannot copy files cannot migrate to each other.
	c = &Cell{}
	RunMigrate(context.Background(), migrateGuest(sourceJSON("pass", 500, 0, 0), "", ""), dst.fakeGuest, Spec{Kind: KindMigrate, Tracker: "ldt"}, c)
	assert.Equal(t, result.VFail, c.Migrate.Verdict)
}
