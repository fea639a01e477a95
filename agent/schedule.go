package agent

import "github.com/custos-backup/custos/jobs"

// checkSchedule validates a source's schedule with the parser the
// scheduler itself uses, so that what passes "config check" also runs.
func checkSchedule(spec string) error {
	_, err := jobs.ParseSchedule(spec)
	return err
}

// scheduleName is the scheduler entry of a source. It seeds the
// @random_every offset, so it must stay stable across restarts.
func scheduleName(source string) string { return "ingest/" + source }
