package lab

// The executor's view of a guest, declared once.

import (
	"context"

	"ldtlab/orchestrator/report"
)

// Guest is what the executor (orchestrator/cell, orchestrator/stress)
// needs from a booted guest: *Machine, or a fake in unit tests.
type Guest interface {
	Run(ctx context.Context, cmd string) (Result, error)
	// ReportMark and ReportsSince attribute kernel reports to the cell
	// during which they began; ReportsSince waits for a report still
	// being printed.
	ReportMark() int
	ReportsSince(ctx context.Context, mark int) []report.Report
}

var _ Guest = (*Machine)(nil)
