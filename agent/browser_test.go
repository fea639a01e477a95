package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/custos-backup/custos/jobs"
)

// chromiumPath finds the browser for the status page test. It is not
// optional: scripts/test.sh installs it and says where it is.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CUSTOS_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: the status page is tested in a real headless browser. " +
		"Run scripts/test.sh, which installs it (apt-get install chromium), or set CUSTOS_CHROMIUM to its path.")
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns a
// tab's context. Page errors (uncaught exceptions, console.error) are
// collected; check them with the returned func.
func browser(ctx context.Context, t *testing.T, chromium string) (tab context.Context, pageErrors func() []string) {
	t.Helper()
	var out bytes.Buffer
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		// Without these Chromium tries to reach Google on this closed
		// network and stalls.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.CombinedOutput(&lockedWriter{w: &out}),
	)
	// The browser outlives ctx until the cleanup, so that a test that gave
	// up can still show what the page looked like.
	actx, cancelAlloc := chromedp.NewExecAllocator(context.WithoutCancel(ctx), opts...)
	tab, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		if t.Failed() {
			t.Logf("chromium output:\n%s", out.String())
		}
	})
	// The first Run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	var mu sync.Mutex
	var errs []string
	if err := chromedp.Listen(tab, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = "exception: " + ev.ExceptionDetails.Text
			if ev.ExceptionDetails.Exception != nil {
				msg += " " + ev.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if ev.Type != runtime.ConsoleAPICalledTypeError {
				return
			}
			msg = "console.error:"
			for _, a := range ev.Args {
				msg += " " + string(a.Value) + a.Description
			}
		default:
			return
		}
		mu.Lock()
		errs = append(errs, msg)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return tab, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), errs...)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// waitJS evaluates a JavaScript expression in the page until it is true.
// Only the test's deadline bounds it (the machine is shared and slow at
// times); on failure it shows what the page looked like.
func waitJS(ctx context.Context, t *testing.T, tab context.Context, what, expr string) {
	t.Helper()
	for {
		ok, err := chromedp.Run(tab, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		select {
		case <-ctx.Done():
			body, _ := chromedp.Run(tab, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("gave up waiting for the page to show %s (last error: %v); the page shows:\n%s", what, err, body)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func evalJS[T any](t *testing.T, tab context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(tab, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestStatusPageInBrowser runs the agent with a real catalog and
// repository and drives its status page in headless Chromium: the page
// shows the finished backups and the schedule, "run now" starts jobs that
// the page then shows finished, "cancel" stops a running job, and a source
// whose name is made of HTML is shown as text.
func TestStatusPageInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	ctx := testContext(t)
	// A source name that is also markup: if the page ever inserts a name as
	// HTML, <i> and <b> elements appear in it.
	evil := `<i>db&amp;<b>"x'`
	ts := newSetup(t, "@every 1h", map[string]string{
		"sources/files.yml": `name: files
handler: file
schedule: "@every 1h"
run_on_start: true
params:
  root: ../data
  excludes: ["*.tmp"]
datasets:
  - name: docs
  - name: photos
`,
		"sources/db.yml": `name: ` + strconv.Quote(evil) + `
handler: dump
schedule: "@every 1h"
run_on_start: true
datasets:
  - name: main
`,
		"handlers/multi.yml": `name: multi
type: pipe
params:
  backup_command: 'printf "data of %s" "$CUSTOS_ATOM"'
  restore_command: 'cat >/dev/null'
`,
		"sources/multi.yml": `name: multi
handler: multi
run_on_start: true
datasets:
  - name: ds
    atoms:
      - name: a
      - name: b
`,
		"handlers/broken.yml": `name: broken
type: pipe
params:
  backup_command: 'echo "dump refused: disk quota" >&2; exit 5'
  restore_command: 'cat >/dev/null'
`,
		"sources/broken.yml": `name: broken
handler: broken
datasets:
  - name: x
`,
		"handlers/slow.yml": `name: slow
type: pipe
params:
  backup_command: 'sleep 600'
  restore_command: 'cat >/dev/null'
`,
		"sources/slow.yml": `name: slow
handler: slow
datasets:
  - name: forever
`,
	})
	log := testLogger(t)
	runCtx, stop := context.WithCancel(ctx)
	addr := make(chan string, 1)
	started := make(chan *Agent, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, ts.cfgPath, RunOptions{Logger: log, Listening: func(s string) { addr <- s }, Started: func(a *Agent) { started <- a },
			// The broken source retries once, late enough for the page to
			// show the countdown.
			Retry: &jobs.RetryPolicy{MaxAttempts: 2, InitialBackoff: 15 * time.Second, MaxBackoff: 15 * time.Second}})
	}()
	var a *Agent
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	}
	base := "http://" + <-addr

	// Before any data: the page says loading, not a false "nothing".
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(html), ">Nothing is running.<") || !strings.Contains(string(html), `id="running-empty" data-empty="Nothing is running.">loading…<`) {
		t.Errorf("the page's empty states say something before data arrives:\n%s", html)
	}
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent stop: %v", err)
		}
	}()

	tab, pageErrors := browser(ctx, t, chromium)
	if err := chromedp.Do(tab, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}

	// The run_on_start backups finish and the catalog lists them.
	for _, ds := range []string{"files/docs", "files/photos", evil + "/main", "multi/ds"} {
		waitJS(ctx, t, tab, "the backup of "+ds, `[...document.querySelectorAll("#backups tbody tr td:nth-child(2)")].some(td => td.textContent === `+jsString(ds)+`)`)
	}
	waitJS(ctx, t, tab, "the event stream connected", `document.getElementById("conn").textContent === "live"`)
	if host := evalJS[string](t, tab, `document.getElementById("host").textContent`); host != "test-host" {
		t.Errorf("host: page shows %q, want test-host", host)
	}
	if v := evalJS[string](t, tab, `document.getElementById("version").textContent`); v != Version() {
		t.Errorf("version: page shows %q, want %q", v, Version())
	}
	if pid := evalJS[string](t, tab, `document.getElementById("pid").textContent`); pid != strconv.Itoa(os.Getpid()) {
		t.Errorf("pid: page shows %q, want %d", pid, os.Getpid())
	}
	// The broken source: while it waits to retry, its row counts down to
	// the next attempt; after the last one the banner says what fails and
	// since when.
	a.SubmitSource("broken")
	waitJS(ctx, t, tab, "the retry countdown", `[...document.querySelectorAll("#running tbody tr")].some(tr =>
		tr.cells[1].textContent === "back up broken/x" && /^retrying, next attempt in \d/.test(tr.cells[2].textContent))`)
	waitJS(ctx, t, tab, "the health banner", `!document.getElementById("health").hidden &&
		[...document.querySelectorAll("#health-list li")].some(li => /^backups of broken\/x fail since \d.* ago: .*dump refused: disk quota/.test(li.textContent))`)
	// The repository panel: the catalog's totals and the location.
	waitJS(ctx, t, tab, "the repository panel", `(() => {
		const tr = document.querySelector('#repositories tbody tr[data-repository="local"]');
		return !!tr && tr.cells[1].textContent.endsWith("/work/repo") && Number(tr.cells[2].textContent) >= 4 && /×$/.test(tr.cells[5].textContent);
	})()`)
	// The fleet view lists this host's outcomes from the catalog.
	if err := chromedp.Do(tab, chromedp.Reload()); err != nil {
		t.Fatal(err)
	}
	waitJS(ctx, t, tab, "the fleet view", `[...document.querySelectorAll("#fleet tbody tr")].some(tr =>
		tr.dataset.host === "test-host" && tr.cells[2].textContent === "files/docs" && tr.cells[3].textContent === "ok")`)
	// The schedule: each scheduled source shows its next run; the
	// on-demand one says so.
	for _, src := range []string{"files", evil} {
		waitJS(ctx, t, tab, "the next run of "+src, `(() => {
			const tr = [...document.querySelectorAll("#sources tbody tr")].find(tr => tr.dataset.source === `+jsString(src)+`);
			return !!tr && /^in \d/.test(tr.querySelector("td.next").textContent) && tr.cells[3].textContent.startsWith("@every 1h");
		})()`)
	}
	if s := evalJS[string](t, tab, `[...document.querySelectorAll("#sources tbody tr")].find(tr => tr.dataset.source === "slow").cells[3].textContent`); s != "on demand" {
		t.Errorf("schedule of the on-demand source: page shows %q", s)
	}
	// The finished ingest jobs are in the results, ok.
	waitJS(ctx, t, tab, "four ok results", `document.querySelectorAll('#results tbody tr[data-result="ok"]').length === 4`)
	// A dataset stored as one snapshot per atom says so.
	if got := evalJS[string](t, tab, `[...document.querySelectorAll("#backups tbody tr")].find(tr => tr.cells[1].textContent === "multi/ds").cells[7].textContent`); got != "2 snapshots (one per atom)" {
		t.Errorf("snapshot of multi/ds: page shows %q", got)
	}

	// Escaping: the name is shown as the very text of the config, and no
	// element came out of it.
	if n := evalJS[int](t, tab, `document.querySelectorAll("body i, body b").length`); n != 0 {
		t.Errorf("the page has %d <i>/<b> element(s): a name was inserted as HTML", n)
	}
	if got := evalJS[string](t, tab, `[...document.querySelectorAll("#sources tbody tr")].find(tr => tr.dataset.source === `+jsString(evil)+`).cells[0].textContent`); got != evil {
		t.Errorf("source name: page shows %q, want %q", got, evil)
	}
	if !evalJS[bool](t, tab, `[...document.querySelectorAll("#results tbody tr td:nth-child(2)")].some(td => td.textContent === "back up " + `+jsString(evil+"/main")+`)`) {
		t.Errorf("results do not show the job of %q as text", evil)
	}

	// "run now" on files: the page reports the new jobs and then shows
	// them finished.
	runFiles := chromedp.JSPath(`[...document.querySelectorAll("#sources button.run")].find(b => b.dataset.source === "files")`)
	if err := chromedp.Do(tab, chromedp.Click(runFiles)); err != nil {
		t.Fatalf("click run now: %v", err)
	}
	waitJS(ctx, t, tab, "the started jobs", `/^started 2 job\(s\) for files: /.test(document.getElementById("msg").textContent)`)
	ids := regexp.MustCompile(`ingest-[0-9a-f]+`).FindAllString(evalJS[string](t, tab, `document.getElementById("msg").textContent`), -1)
	if len(ids) != 2 {
		t.Fatalf("run now: the page names %d job ids, want 2", len(ids))
	}
	for _, id := range ids {
		waitJS(ctx, t, tab, "job "+id+" finished ok", `!!document.querySelector('#results tbody tr[data-job=`+jsString(id)+`][data-result="ok"]')`)
	}
	waitJS(ctx, t, tab, "the new backup in the catalog list", `document.querySelectorAll("#backups tbody tr").length === 6`)

	// "run now" on the slow source, then "cancel" on its running job.
	runSlow := chromedp.JSPath(`[...document.querySelectorAll("#sources button.run")].find(b => b.dataset.source === "slow")`)
	if err := chromedp.Do(tab, chromedp.Click(runSlow)); err != nil {
		t.Fatalf("click run now: %v", err)
	}
	waitJS(ctx, t, tab, "the slow job running", `[...document.querySelectorAll("#running tbody tr")].some(tr => tr.cells[1].textContent === "back up slow/forever" && tr.cells[2].textContent.startsWith("running"))`)
	slowID := evalJS[string](t, tab, `[...document.querySelectorAll("#running tbody tr")].find(tr => tr.cells[1].textContent === "back up slow/forever").dataset.job`)
	cancel := chromedp.JSPath(`document.querySelector('#running button.cancel[data-job=` + jsString(slowID) + `]')`)
	if err := chromedp.Do(tab, chromedp.Click(cancel)); err != nil {
		t.Fatalf("click cancel: %v", err)
	}
	waitJS(ctx, t, tab, "the slow job canceled", `!!document.querySelector('#results tbody tr[data-job=`+jsString(slowID)+`][data-result="canceled"]')`)
	waitJS(ctx, t, tab, "nothing running", `document.querySelectorAll("#running tbody tr").length === 0 && !document.getElementById("running-empty").hidden &&
		document.getElementById("running-empty").textContent === "Nothing is running."`)

	// Live progress. Stream backups report no progress before they end
	// (repository.BackupStream has no progress ticker), so a job of the
	// agent's own runner reports it here, the way Manager.Ingest does.
	progressed := make(chan struct{})
	pid, err := a.Runner().Submit(ctx, jobs.New(jobs.Info{Kind: "ingest", Description: "back up progress/test"}, func(ctx context.Context) error {
		jobs.ReportProgress(ctx, jobs.Progress{Files: 7, Bytes: 5 << 20, TotalFiles: 10, Current: "<b>docs/sub/big.bin"})
		close(progressed)
		<-ctx.Done()
		return ctx.Err()
	}))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-progressed:
	case <-ctx.Done():
		t.Fatal("the progress job never ran")
	}
	waitJS(ctx, t, tab, "the job's progress", `(() => {
		const tr = document.querySelector('#running tbody tr[data-job=`+jsString(pid)+`]');
		return !!tr && tr.cells[4].textContent === "7 of 10" && tr.cells[5].textContent === "5.0 MiB" &&
			/ (KiB|MiB)\/s$/.test(tr.cells[6].textContent) && tr.cells[7].textContent === "<b>docs/sub/big.bin";
	})()`)
	if n := evalJS[int](t, tab, `document.querySelectorAll("body b").length`); n != 0 {
		t.Errorf("the current file name was inserted as HTML")
	}
	if err := a.Runner().Cancel(pid); err != nil {
		t.Fatal(err)
	}

	// The API behind the buttons: an unknown job is a 404, and a
	// cross-site POST (another web page in the admin's browser) is refused.
	for _, c := range []struct {
		url, site string
		want      int
	}{
		{"/api/jobs/ingest-nosuchjob/cancel", "", http.StatusNotFound},
		{"/api/run?source=nosuchsource", "", http.StatusNotFound},
		{"/api/run?source=files", "cross-site", http.StatusForbidden},
		{"/api/jobs/" + slowID + "/cancel", "cross-site", http.StatusForbidden},
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+c.url, nil)
		if c.site != "" {
			req.Header.Set("Sec-Fetch-Site", c.site)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("POST %s (Sec-Fetch-Site %q): %s, want %d", c.url, c.site, resp.Status, c.want)
		}
	}

	if errs := pageErrors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%v", errs)
	}
}
