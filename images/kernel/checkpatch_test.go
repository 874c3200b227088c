package kernel

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseCheckpatch(t *testing.T) {
	// checkpatch.pl --show-types on the old 0005 (before its MAINTAINERS entry).
	out := `WARNING:FILE_PATH_CHANGES: added, moved or deleted file(s), does MAINTAINERS need updating?
#62: 
new file mode 100644

ERROR:MISSING_SIGN_OFF: Missing Signed-off-by: line(s)

total: 1 errors, 1 warnings, 540 lines checked

NOTE: For some of the reported defects, checkpatch may be able to
      mechanically convert to the typical style using --fix or --fix-inplace.
`
	r := parseCheckpatch("0005.patch", out)
	assert.False(t, r.OK())
	assert.Equal(t, []string{"WARNING FILE_PATH_CHANGES: added, moved or deleted file(s), does MAINTAINERS need updating?"}, r.Problems)
	assert.Equal(t, []string{"ERROR MISSING_SIGN_OFF: Missing Signed-off-by: line(s)"}, r.Allowed)

	r = parseCheckpatch("0006.patch", "ERROR:MISSING_SIGN_OFF: Missing Signed-off-by: line(s)\n\ntotal: 1 errors, 0 warnings, 34 lines checked\n")
	assert.True(t, r.OK())

	r = parseCheckpatch("x.patch", "CHECK:PARENTHESIS_ALIGNMENT: Alignment should match open parenthesis\nERROR:CODE_INDENT: code indent should use tabs where possible\n")
	assert.Len(t, r.Problems, 2)
	assert.Contains(t, r.Problems[1], "ERROR CODE_INDENT")
}
