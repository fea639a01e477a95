package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/custos-backup/custos/agent"
	"github.com/custos-backup/custos/jobs"
)

// restoreViaAgent submits the restore to the running agent as a job on its
// restore queue (POST /api/jobs), follows the job's event stream and
// prints its progress, and returns the job's result. Ctrl-C cancels the
// job (DELETE /api/jobs/{id}).
func restoreViaAgent(ctx context.Context, path string, req agent.JobRequest, stderr io.Writer, quiet bool) error {
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		return configError(err)
	}
	ac := newAgentClient(cfg)
	if addr := agent.RunningAgentAddr(cfg.WorkDir); addr != "" {
		ac.listen = addr
	}
	start := "custos agent -c " + path
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, statusTimeout)
	ans, err := ac.callBody(callCtx, http.MethodPost, "/api/jobs", body, start)
	cancel()
	if err != nil {
		return err
	}
	var created struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(ans, &created); err != nil || created.ID == "" {
		return fmt.Errorf("agent at %s: the answer to the restore job is not a job: %s", ac.listen, firstLine(string(ans)))
	}
	if !quiet {
		fmt.Fprintf(stderr, "restore job %s submitted to the agent at %s\n", created.ID, ac.listen)
	}
	st, err := followJob(ctx, ac, created.ID, start, func(st jobs.Status) {
		if !quiet && st.State == jobs.StateRunning {
			p := st.Progress
			fmt.Fprintf(stderr, "%s: %d files, %s restored\n", st.ID, p.Files, agent.HumanBytes(p.Bytes))
		}
	})
	if err != nil && ctx.Err() != nil {
		// Interrupted: the job must not go on without anyone waiting.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := ac.call(dctx, http.MethodDelete, "/api/jobs/"+created.ID, start); derr != nil {
			fmt.Fprintf(stderr, "cancelling restore job %s: %v\n", created.ID, derr)
		} else {
			fmt.Fprintf(stderr, "restore job %s cancelled\n", created.ID)
		}
		return err
	}
	if err != nil {
		return err
	}
	if st.Result != jobs.ResultOK {
		return fmt.Errorf("restore job %s: %s: %s", st.ID, st.Result, st.Error)
	}
	if !quiet {
		fmt.Fprintf(stderr, "restore job %s ok: %d files, %s, into %s\n", st.ID, st.Progress.Files, agent.HumanBytes(st.Progress.Bytes), req.Target)
	}
	return nil
}

// followJob reads /api/jobs/{id}/events until the job is done, calling fn
// for every status, and returns the final one.
func followJob(ctx context.Context, ac agentClient, id, start string, fn func(jobs.Status)) (jobs.Status, error) {
	resp, err := ac.send(ctx, http.MethodGet, "/api/jobs/"+id+"/events", nil, start)
	if err != nil {
		return jobs.Status{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return jobs.Status{}, fmt.Errorf("agent at %s: following job %s: %s", ac.listen, id, resp.Status)
	}
	var last jobs.Status
	event := ""
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if e, ok := strings.CutPrefix(line, "event: "); ok {
			event = e
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || event != "status" {
			continue
		}
		if err := json.Unmarshal([]byte(data), &last); err != nil {
			return last, fmt.Errorf("agent at %s: job %s: an event is not JSON: %w", ac.listen, id, err)
		}
		fn(last)
		if last.State == jobs.StateDone {
			return last, nil
		}
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("agent at %s: following job %s: %w", ac.listen, id, err)
	}
	if ctx.Err() != nil {
		return last, ctx.Err()
	}
	return last, errors.New("the agent ended the job's event stream before the job was done (did it stop?)")
}
