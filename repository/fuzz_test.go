package repository

import (
	"encoding/json"
	"testing"
	"time"
)

func FuzzLock(f *testing.F) {
	b, _ := json.Marshal(lockInfo{Version: 1, Created: time.Unix(5, 0), Refreshed: time.Unix(6, 0), Hostname: "h", PID: 3})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		li, err := decodeLockInfo(b)
		if err == nil && li.Refreshed.Before(li.Created) {
			t.Fatal("lock refreshed before created accepted")
		}
	})
}
