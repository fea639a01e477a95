package metadata

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Key layout; KEYS.md is the reference. Variable-length names are ended by
// sep (NUL), which no name may contain, so a name that contains "/" (atom
// paths) can never run into the fixed-width suffix that follows it.
const (
	sep = "\x00"

	nsBackup      = "backup/"
	nsBackupTime  = "backup-time/"
	nsBackupHost  = "backup-host/"
	nsBackupDS    = "backup-ds/"
	nsDataset     = "dataset/"
	nsDatasetAtom = "dataset-atoms/"
	nsAtom        = "atom/"
	nsJobs        = "jobs/"
	nsFixity      = "fixity/"
	nsFixityLog   = "fixity-log/"
	nsReplica     = "replica/"
	nsLocks       = "locks/"    // reserved: clientv3/concurrency mutexes
	nsElection    = "election/" // reserved: clientv3/concurrency elections
	nsJournal     = "journal/"  // reserved: workflow journals
	revTimeWidth  = 19
	defaultPrefix = "/custos/"
)

// revTime encodes t so that newer times sort first: MaxInt64 minus Unix
// nanoseconds, zero-padded to 19 digits.
func revTime(t time.Time) string {
	return revNanos(t.UnixNano())
}

func revNanos(n int64) string {
	s := strconv.FormatInt(math.MaxInt64-n, 10)
	return strings.Repeat("0", revTimeWidth-len(s)) + s
}

func parseRevTime(s string) (time.Time, error) {
	if len(s) != revTimeWidth {
		return time.Time{}, fmt.Errorf("bad reversed time %q", s)
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad reversed time %q: %w", s, err)
	}
	return time.Unix(0, math.MaxInt64-v).UTC(), nil
}

// keys builds keys under one prefix.
type keys struct{ p string }

func (k keys) backup(id string) string { return k.p + nsBackup + id }

func (k keys) backupTime(b *Backup) string {
	return k.p + nsBackupTime + revTime(b.Timestamp) + "/" + b.ID
}

func (k keys) backupHostPrefix(host string) string { return k.p + nsBackupHost + host + sep }

func (k keys) backupHost(b *Backup) string {
	return k.backupHostPrefix(b.Host) + revTime(b.Timestamp) + "/" + b.ID
}

func (k keys) backupDSPrefix(id string) string { return k.p + nsBackupDS + id + sep }

func (k keys) backupDS(id, source, dataset string) string {
	return k.backupDSPrefix(id) + source + "/" + dataset
}

func (k keys) dataset(source, dataset string, ts time.Time, backupID string) string {
	return k.p + nsDataset + source + "/" + dataset + sep + revTime(ts) + "/" + backupID
}

func (k keys) datasetVersions(source, dataset string) string {
	return k.p + nsDataset + source + "/" + dataset + sep
}

// datasetAtomsPrefix is the prefix of the atom list chunks of one atom
// set (gen) of one dataset version.
func (k keys) datasetAtomsPrefix(source, dataset string, ts time.Time, backupID, gen string) string {
	return k.p + nsDatasetAtom + source + "/" + dataset + sep + revTime(ts) + "/" + backupID + sep + gen + sep
}

func (k keys) datasetAtomsChunk(source, dataset string, ts time.Time, backupID, gen string, i int) string {
	return k.datasetAtomsPrefix(source, dataset, ts, backupID, gen) + fmt.Sprintf("%06d", i)
}

func (k keys) atomNS() string { return k.p + nsAtom }

// atom is the key of one atom of one atom set (gen) of a dataset version.
// gen "" is the layout before atom sets (one key per version).
func (k keys) atom(name string, ts time.Time, backupID, gen string) string {
	key := k.p + nsAtom + name + sep + revTime(ts) + "/" + backupID
	if gen != "" {
		key += sep + gen
	}
	return key
}

// parseAtomKey splits an atom key into global atom name, time, backup id
// and atom set (gen; "" for keys written before atom sets).
func (k keys) parseAtomKey(key string) (name string, ts time.Time, backupID, gen string, err error) {
	rest, ok := strings.CutPrefix(key, k.p+nsAtom)
	if !ok {
		return "", time.Time{}, "", "", fmt.Errorf("atom key %q outside namespace", key)
	}
	name, suffix, ok := strings.Cut(rest, sep)
	if !ok || len(suffix) < revTimeWidth+2 || suffix[revTimeWidth] != '/' {
		return "", time.Time{}, "", "", fmt.Errorf("malformed atom key %q", key)
	}
	ts, err = parseRevTime(suffix[:revTimeWidth])
	if err != nil {
		return "", time.Time{}, "", "", fmt.Errorf("atom key %q: %w", key, err)
	}
	backupID, gen, _ = strings.Cut(suffix[revTimeWidth+1:], sep)
	return name, ts, backupID, gen, nil
}

func (k keys) jobsPrefix(host string) string { return k.p + nsJobs + host + sep }

func (k keys) job(host, jobID string) string { return k.jobsPrefix(host) + jobID }

func (k keys) fixityPrefix(repo string) string { return k.p + nsFixity + repo + sep }

func (k keys) fixity(repo, pack string) string { return k.fixityPrefix(repo) + pack }

func (k keys) fixityLogPrefix(repo, pack string) string {
	return k.p + nsFixityLog + repo + sep + pack + sep
}

func (k keys) fixityLog(r *FixityResult) string {
	return k.fixityLogPrefix(r.Repository, r.Pack) + revTime(r.Time)
}

func (k keys) replicaPrefix(repo string) string { return k.p + nsReplica + repo + sep }

func (k keys) replica(repo, snap string) string { return k.replicaPrefix(repo) + snap }

// prefixEnd returns the smallest key greater than every key with prefix p
// (clientv3.GetPrefixRangeEnd without the import).
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00" // whole keyspace
}
