package agent

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const peerAgent = `hostname: h1
work_dir: work
repositories:
  - name: local
    url: repo
    password: secret
peers:
`

// TestPeerConfig: a good peers: section loads with its defaults; every
// bad peer is refused with its file, line and field.
func TestPeerConfig(t *testing.T) {
	dir := writeTree(t, t.TempDir(), map[string]string{"agent.yml": peerAgent + `  - name: b
    endpoints: [https://etcd-b:2379]
    ca_file: ca.crt
    hosts: [b1, b2]
    schedule: "@every 1h"
  - name: c
    prefix: /site-c/
    hosts: [c1]
    overlap_revisions: 10
`})
	cfg, err := LoadConfig(filepath.Join(dir, "agent.yml"))
	if err != nil {
		t.Fatal(err)
	}
	b, c := cfg.Peer("b"), cfg.Peer("c")
	if b == nil || c == nil || cfg.Peer("d") != nil {
		t.Fatalf("peers: %+v", cfg.Peers)
	}
	if b.Prefix != "/custos/" || b.CAFile != filepath.Join(dir, "ca.crt") || !slices.Equal(b.Hosts, []string{"b1", "b2"}) || b.Schedule != "@every 1h" {
		t.Errorf("peer b: %+v", b)
	}
	if len(c.Endpoints) != 0 || c.Prefix != "/site-c/" || c.Overlap != 10 || c.Schedule != "" {
		t.Errorf("peer c: %+v", c)
	}

	cases := []struct {
		name, peers string
		want        []string
	}{
		{"no hosts", "  - name: b\n    prefix: /b/\n",
			[]string{`agent.yml:8: field "peers[0].hosts": missing: which hosts' records does peer "b" own?`}},
		{"this host", "  - name: b\n    prefix: /b/\n    hosts: [b1, h1]\n",
			[]string{`agent.yml:8: field "peers[0].hosts": peer "b" lists h1, this host`}},
		{"a host of two peers", "  - name: b\n    prefix: /b/\n    hosts: [x]\n  - name: c\n    prefix: /c/\n    hosts: [x]\n",
			[]string{`agent.yml:11: field "peers[1].hosts": host x is owned by peer "b" already`}},
		{"nowhere", "  - name: b\n    hosts: [b1]\n",
			[]string{`agent.yml:8: field "peers[0].endpoints": missing: peer "b" needs the endpoints`}},
		{"own prefix", "  - name: b\n    prefix: /custos/\n    hosts: [b1]\n",
			[]string{`agent.yml:8: field "peers[0].prefix": peer "b" has this site's own key prefix /custos/`}},
		{"bad prefix", "  - name: b\n    prefix: /b\n    hosts: [b1]\n",
			[]string{`agent.yml:9: field "peers[0].prefix": a key prefix must end with '/'`}},
		{"tls without endpoints", "  - name: b\n    prefix: /b/\n    ca_file: ca\n    hosts: [b1]\n",
			[]string{`agent.yml:10: field "peers[0].ca_file": only for a peer on its own etcd cluster`}},
		{"bad endpoint", "  - name: b\n    endpoints: [ftp://x]\n    hosts: [b1]\n",
			[]string{`agent.yml:9: field "peers[0].endpoints[0]": etcd endpoint "ftp://x"`}},
		{"bad schedule", "  - name: b\n    prefix: /b/\n    hosts: [b1]\n    schedule: sometimes\n",
			[]string{`agent.yml:11: field "peers[0].schedule": `}},
		{"twice", "  - name: b\n    prefix: /b/\n    hosts: [b1]\n  - name: b\n    prefix: /c/\n    hosts: [c1]\n",
			[]string{`agent.yml:11: field "peers[1].name": peer "b" is defined more than once`}},
		{"bad name", "  - name: a/b\n    prefix: /b/\n    hosts: [b1]\n",
			[]string{`agent.yml:8: field "peers[0].name": name "a/b" may not contain`}},
		{"unknown field", "  - name: b\n    prefix: /b/\n    hosts: [b1]\n    owner: x\n",
			[]string{`agent.yml:11: field "peers[0].owner": unknown field`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeTree(t, t.TempDir(), map[string]string{"agent.yml": peerAgent + tc.peers})
			_, err := LoadConfig(filepath.Join(dir, "agent.yml"))
			var ce ConfigErrors
			if !errors.As(err, &ce) {
				t.Fatalf("want ConfigErrors, got %v", err)
			}
			var got []string
			for _, e := range ce {
				got = append(got, strings.TrimPrefix(e.Error(), dir+"/"))
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %d:\n got  %s\n want %s...", i, got[i], tc.want[i])
				}
			}
		})
	}
}
