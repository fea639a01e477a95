package agent

import (
	"runtime"
	"runtime/debug"
)

// Version says which custos this is: the module version when built from a
// tagged module, else the VCS revision the binary was built from (with
// "+dirty" for uncommitted changes), and the Go version.
func Version() string {
	v := "(devel)"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v + " " + runtime.Version()
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	} else {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			v = "(devel) " + rev
			if modified == "true" {
				v += "+dirty"
			}
		}
	}
	return v + " " + runtime.Version()
}
