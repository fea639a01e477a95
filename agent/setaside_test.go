package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-backup/custos/jobs"
	"github.com/custos-backup/custos/metadata"
)

// TestSetAsideRecordFailsItsDataset: a spooled record that the catalog
// refuses for good (here: a backup id the catalog already holds with
// another time) is set aside when the agent flushes its spool, and the
// dataset's last outcome becomes a failure naming it, so the status and
// the banner say that backup is not findable.
func TestSetAsideRecordFailsItsDataset(t *testing.T) {
	ctx := testContext(t)
	ts := newSetup(t, "@every 1h", nil)
	log := testLogger(t)
	cm, err := NewConfigManager(ts.cfgPath, log)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := OpenCatalog(ctx, cm.Current().Config, CatalogOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mgr := NewManager(cm, cat.Store, nil, log)
	res, err := BackupNow(ctx, mgr, cm.Current(), "db", "")
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("backup: %v %+v", err, res)
	}
	mgr.Close()
	// The agent serves the catalog next: this process lets it go.
	if err := cat.Close(); err != nil {
		t.Fatal(err)
	}
	// The record as the agent's spool would hold it, but with another
	// time for the same backup id: etcd can never take it.
	cfg := cm.Current().Config
	rec := map[string]any{
		"backup":  &metadata.Backup{ID: res[0].BackupID, Host: "test-host", Timestamp: time.Now().Add(time.Hour)},
		"dataset": res[0].Record,
	}
	b, _ := json.Marshal(rec)
	spool := AgentSpoolDir(cfg)
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spool, "00000000000000000001.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}

	a, _ := startTestAgent(ctx, t, ts)
	var rep *StatusReport
	waitFor(ctx, t, "the set-aside record as a failed outcome, in the banner", func() bool {
		a.outcomes.invalidate()
		a.health.invalidate()
		rep = a.Status(ctx)
		outcome, banner := false, false
		for _, o := range rep.Outcomes {
			outcome = outcome || (o.Source == "db" && o.Dataset == "main" && o.Result == string(jobs.ResultError) && strings.Contains(o.Error, "set aside"))
		}
		for _, p := range rep.Health {
			banner = banner || strings.HasPrefix(p.What, "backups of db/main fail")
		}
		// One report holds all three: the record is listed before the
		// hook writes its outcome, but a report reads the spool before the
		// outcomes, so an earlier one may show the outcome alone.
		return outcome && banner && len(rep.SpoolFailed) > 0
	})
	if len(rep.SpoolFailed) != 1 || rep.SpoolFailed[0].BackupID != res[0].BackupID {
		t.Errorf("spool_failed: %+v, want the one record of backup %s", rep.SpoolFailed, res[0].BackupID)
	}
}

// TestSetAsideQueue: records set aside before the agent exists reach it
// once it does, and later ones go straight through.
func TestSetAsideQueue(t *testing.T) {
	var q setAsideQueue
	q.add(metadata.FailedRecord{BackupID: "early-1"})
	q.add(metadata.FailedRecord{BackupID: "early-2"})
	var got []string
	q.deliverTo(func(f metadata.FailedRecord) { got = append(got, f.BackupID) })
	q.add(metadata.FailedRecord{BackupID: "late"})
	if strings.Join(got, ",") != "early-1,early-2,late" {
		t.Errorf("delivered %v", got)
	}
}
