package result

// The wire types of the host↔guest contract: what each guest program
// prints as its one JSON result and the host reads back. The guest
// packages alias them (checkpoint.Result = Checkpoint, stress.Result =
// Stress, ...), so a field added here is seen on both sides at once.

// Checkpoint is what ldt-check prints for a checkpoint run.
type Checkpoint struct {
	Mode       string `json:"mode"`
	Tracker    string `json:"tracker"`
	Pid        int    `json:"pid"`
	Rounds     int    `json:"rounds"`
	Outcome    string `json:"outcome"`
	AsExpected bool   `json:"as_expected"`
	Reason     string `json:"reason"`
	// Missed counts pages whose final content differs from the image.
	Missed int `json:"missed"`
	// Zeroed counts differing pages the target discarded (they read as
	// zeros and are not mapped: MADV_DONTNEED, reclaimed MADV_FREE): a
	// content change no dirty tracker reports, shown, not failed.
	Zeroed     int      `json:"zeroed"`
	Compared   int      `json:"compared_pages"`
	ImagePages int      `json:"image_pages"`
	Reported   []int    `json:"reported"`
	StoppedMS  []int64  `json:"stopped_ms"`
	Samples    []string `json:"samples,omitempty"`
	Notes      []string `json:"notes,omitempty"`
	// Unreadable counts page reads /proc/PID/mem refused (EOF, EIO).
	Unreadable    int      `json:"unreadable_pages"`
	DurationMS    int64    `json:"duration_ms"`
	SwappedAtEnd  int      `json:"swapped_pages_at_end"`
	RegionsAtEnd  int      `json:"regions_at_end"`
	TargetExited  bool     `json:"target_exited,omitempty"`
	FirstCopyPgs  int      `json:"initial_copy_pages"`
	NewRegionPgs  int      `json:"new_region_pages"`
	MissedRegions []string `json:"missed_regions,omitempty"`
}

type EpochDiff struct {
	Epoch        int   `json:"epoch"`
	LDT          int   `json:"ldt"`
	SoftDirty    int   `json:"softdirty"`
	LDTOnly      int   `json:"ldt_minus_softdirty"`
	SoftDirtyOnl int   `json:"softdirty_minus_ldt"`
	LDTOnlyPgs   []int `json:"ldt_minus_softdirty_pages,omitempty"`
	SDOnlyPgs    []int `json:"softdirty_minus_ldt_pages,omitempty"`
}

type Comparison struct {
	Mode     string      `json:"mode"`
	Scenario string      `json:"scenario"`
	Seed     uint64      `json:"seed"`
	Epochs   []EpochDiff `json:"epochs"`
	Results  []*Cell     `json:"results"`
	Note     string      `json:"note,omitempty"`
}

// StressLost is one page whose memory differs from the shadow at the end.
type StressLost struct {
	Addr    uintptr  `json:"addr"`
	Epoch   int      `json:"epoch"`
	State   string   `json:"state"`   // pagemap/kpageflags/NUMA facts
	Sources []string `json:"sources"` // who wrote the words the shadow lacks
}

// Stress is the outcome of a run.
type Stress struct {
	Tracker     string         `json:"tracker"`
	Seed        uint64         `json:"seed"`
	Pages       int            `json:"pages"`
	Writers     int            `json:"writers"`
	Epochs      int            `json:"epochs"`
	DurationMS  int64          `json:"duration_ms"`
	Writes      uint64         `json:"writes"`
	Collections int            `json:"collections"`
	Copied      uint64         `json:"pages_copied"`
	Agitators   map[string]int `json:"agitators"` // name -> actions done
	// Effects: what each agitator achieved (name -> effect -> count):
	// pages migrated, pages swapped out, collapses made, pages merged…
	// Counted by the agitator where the kernel says so per call (status
	// arrays, mincore, its own KSM counters); vmstat-based ones say "all causes".
	Effects   map[string]map[string]int `json:"effects,omitempty"`
	LostPages int                       `json:"lost_pages"`
	// LostBySource counts lost pages by who wrote the missing words
	// (a page with several writers counts for each).
	LostBySource map[string]int `json:"lost_by_source,omitempty"`
	Lost         []StressLost   `json:"lost,omitempty"` // the first few
	// LostPerEpoch lists the epoch of every lost page (for the soak).
	LostPerEpoch []int    `json:"lost_epochs,omitempty"`
	Notes        []string `json:"notes,omitempty"`
}

// CRIUReplace says what Replace did, per image directory.
type CRIUReplace struct {
	// Pagemaps are the task pagemap images rewritten (pagemap-PID.img).
	Pagemaps []string `json:"pagemaps"`
	// Pages is every page CRIU stored (the frozen process's private memory).
	Pages int `json:"pages"`
	// Same pages: the replacement equals what CRIU read from the frozen
	// process. Differ: it does not (a write the image lacks). Absent: the
	// source had no copy and zeros were written (counted in Differ too
	// when CRIU's page was not all zeros).
	Same   int `json:"same"`
	Differ int `json:"differ"`
	Absent int `json:"absent"`
	// ChangedAfter counts pages that differ although Settled vouches for
	// the replacement (the memory changed after the freeze).
	ChangedAfter int `json:"changed_after"`
	// Samples name the first differing pages; DifferAt lists the first
	// 64 differing pages' addresses (for the caller to name their
	// mappings).
	Samples  []string `json:"samples,omitempty"`
	DifferAt []uint64 `json:"differ_at,omitempty"`
	// ShmemPagemaps are shared-memory page images, which Replace leaves
	// as CRIU wrote them (listed so a caller can refuse them).
	ShmemPagemaps []string `json:"shmem_pagemaps,omitempty"`
}

// MigrationRound is what one round copied.
type MigrationRound struct {
	Round int `json:"round"`
	// Kind: initial (everything), precopy, final (target frozen).
	Kind string `json:"kind"`
	// Reported is the number of pages the tracker reported written.
	Reported int `json:"reported_pages"`
	// NewArea is the number of populated pages of mappings that did not
	// exist at the previous round, copied whole.
	NewArea int `json:"new_area_pages"`
	// Copied is the number of distinct pages copied: the transfer.
	Copied int `json:"copied_pages"`
	// Unreadable pages (unmapped meanwhile) could not be copied.
	Unreadable int `json:"unreadable_pages,omitempty"`
	// Swapped is how many of the target's private pages were in swap.
	Swapped   int     `json:"swapped_pages"`
	StoppedMS float64 `json:"stopped_ms"`
	MS        float64 `json:"ms"`
}

// Migration is what ldt-migrate prints for the source side.
type Migration struct {
	Mode    string           `json:"mode"`
	Tracker string           `json:"tracker"`
	Pid     int              `json:"pid"`
	Rounds  []MigrationRound `json:"rounds"`
	// Outcome: pass (dumped and replaced; the host judges the restore),
	// fail (the migration itself failed: Reason), skip (the tracker
	// cannot track this target: Reason).
	Outcome string `json:"outcome"`
	Reason  string `json:"reason,omitempty"`
	// QuiesceOutput is the quiesce hook's stdout (the digest).
	QuiesceOutput string `json:"quiesce_output,omitempty"`
	ImagePages    int    `json:"image_pages"`
	// The first oracle: the image against the frozen process's memory
	// (/proc/PID/mem), every private page CRIU dumps.
	Compared   int      `json:"compared_pages"`
	Mismatched int      `json:"mismatched_pages"`
	Samples    []string `json:"samples,omitempty"`
	// CRIU's dump and the replacement of its pages (the second oracle:
	// the image against CRIU's reading of the frozen process).
	DumpMS  float64      `json:"dump_ms"`
	Replace *CRIUReplace `json:"replace,omitempty"`
	// FromFile counts pages CRIU stored that were their file's at the
	// freeze (given the file's content; FromFileAreas names them).
	FromFile int `json:"from_file_pages,omitempty"`
	// DifferAreas name the mappings of pages CRIU stored that differ
	// from the image.
	DifferAreas   []string        `json:"differ_areas,omitempty"`
	FromFileAreas []string        `json:"from_file_areas,omitempty"`
	DumpLog       string          `json:"dump_log,omitempty"`
	Frozen        float64         `json:"frozen_ms"`
	Took          float64         `json:"took_ms"`
	Notes         []string        `json:"notes,omitempty"`
	Dir           string          `json:"dir"`
	Areas         []MigrationArea `json:"areas,omitempty"`
}

// MigrationArea names a mapping where the image and the frozen process
// differ.
type MigrationArea struct {
	Area       string `json:"area"`
	Mismatched int    `json:"mismatched_pages"`
}

// MigrationRestore is what -restore prints.
type MigrationRestore struct {
	Mode    string  `json:"mode"`
	Outcome string  `json:"outcome"`
	Reason  string  `json:"reason,omitempty"`
	Pid     int     `json:"pid"`
	MS      float64 `json:"ms"`
	Log     string  `json:"log,omitempty"`
}

// Outcome is "pass" when the stress run lost nothing, else "fail" (what
// ldt-stress prints; the host judges with Verdicts).
func (r *Stress) Outcome() string {
	if r.LostPages == 0 {
		return Pass
	}
	return Fail
}
