package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	godebug "runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/custos-backup/custos/agent"
)

func newAgentCmd() *cobra.Command {
	var path, listen string
	var debug bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent: schedules, catalog, status page",
		Long: `Run the custos agent in the foreground. It backs up every source on its
schedule, keeps the catalog (an embedded etcd server unless metadb lists
endpoints), and serves a status page, a JSON API, /metrics and /debug/pprof
on http_listen. SIGHUP reloads the configuration (a broken one is logged and
ignored); SIGTERM or Ctrl-C stops it, cancelling running jobs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			// The config is read here first only for its log format, so
			// that every line, the startup ones too, has one format.
			cfg, err := agent.LoadConfig(path)
			if err != nil {
				return configError(err)
			}
			var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
			if cfg.LogFormat == "json" {
				handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
			}
			log := slog.New(handler)
			// The daemon's heap between jobs is small; during a backup it
			// is the CLI backup's heap, so the same setting keeps its peak
			// low (GOGC in the environment wins).
			if _, set := os.LookupEnv("GOGC"); !set {
				godebug.SetGCPercent(backupGCPercent)
			}
			reload, stop := reloadOnSIGHUP(log)
			defer stop()
			// Each job's data work runs in a child process of this
			// binary, at the configured nice level and I/O class.
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding the custos binary for worker processes: %w", err)
			}
			err = agent.Run(cmd.Context(), path, agent.RunOptions{Logger: log, Reload: reload, HTTPListen: listen,
				Worker: &agent.WorkerOptions{Binary: exe}})
			return configError(err)
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&listen, "listen", "", "HTTP address (overrides http_listen)")
	cmd.Flags().BoolVar(&debug, "debug", false, "log debug messages too")
	return cmd
}

// reloadOnSIGHUP turns SIGHUP into reload requests. Signals that arrive
// while a reload is pending merge into it. stop undoes the signal handler.
func reloadOnSIGHUP(log *slog.Logger) (reload <-chan struct{}, stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ch := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				log.Info("SIGHUP: reloading the configuration")
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ch, func() {
		signal.Stop(hup)
		close(done)
	}
}
