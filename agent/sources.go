package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/custos-backup/custos/handlers"
)

// builtinHandlers are always there, so that a source can say "handler: file"
// without a handlers/ file. A handlers/*.yml file of the same name replaces
// the built-in one.
func builtinHandlers() []*HandlerSpec {
	return []*HandlerSpec{
		{Name: "file", Type: "file", File: "(built-in)"},
		{Name: "pipe", Type: "pipe", File: "(built-in)"},
	}
}

func addBuiltinHandlers(cfg *Config) {
	for _, b := range builtinHandlers() {
		if cfg.Handler(b.Name) == nil {
			cfg.Handlers = append(cfg.Handlers, b)
		}
	}
}

func (cfg *Config) loadHandler(file string, errs *ConfigErrors) {
	root, ok := readYAML(file, errs)
	if !ok {
		return
	}
	d := &decoder{file: file, errs: errs}
	h := &HandlerSpec{File: file, Line: root.Line}
	keys := d.mapping(root, "", fields{
		"name": func(v *yaml.Node, f string) {
			if d.str(v, f, &h.Name) {
				checkName(d, v, f, h.Name)
			}
		},
		"type": func(v *yaml.Node, f string) {
			if d.str(v, f, &h.Type) && !handlers.KnownType(h.Type) {
				d.errorf(v, f, "unknown handler type %q (known: %s)", h.Type, strings.Join(handlers.Types(), ", "))
			}
		},
		"params": func(v *yaml.Node, f string) { d.params(v, f, &h.Params) },
	})
	if keys["name"] == nil {
		d.errorf(root, "name", "missing: every handler needs a name")
		return
	}
	if keys["type"] == nil {
		d.errorf(root, "type", "missing: handler %q needs a type (%s)", h.Name, strings.Join(handlers.Types(), ", "))
	}
	if prev := cfg.Handler(h.Name); prev != nil {
		d.errorf(keys["name"], "name", "handler %q is already defined in %s:%d", h.Name, prev.File, prev.Line)
		return
	}
	cfg.Handlers = append(cfg.Handlers, h)
}

func (cfg *Config) loadSource(file string, errs *ConfigErrors) {
	root, ok := readYAML(file, errs)
	if !ok {
		return
	}
	d := &decoder{file: file, errs: errs}
	abs, _ := filepath.Abs(filepath.Dir(file))
	s := &SourceSpec{File: file, Line: root.Line, Dir: abs}
	keys := d.mapping(root, "", fields{
		"name": func(v *yaml.Node, f string) {
			if d.str(v, f, &s.Name) {
				checkName(d, v, f, s.Name)
			}
		},
		"handler":      func(v *yaml.Node, f string) { d.str(v, f, &s.Handler) },
		"schedule":     func(v *yaml.Node, f string) { d.str(v, f, &s.Schedule) },
		"run_on_start": func(v *yaml.Node, f string) { d.boolean(v, f, &s.RunOnStart) },
		"datasets": func(v *yaml.Node, f string) {
			seen := map[string]bool{}
			d.sequence(v, f, func(_ int, item *yaml.Node, f string) {
				ds := decodeDataset(d, item, f)
				if ds == nil {
					return
				}
				if seen[ds.Name] {
					d.errorf(item, f+".name", "dataset %q is defined more than once in this source", ds.Name)
					return
				}
				seen[ds.Name] = true
				s.Datasets = append(s.Datasets, ds)
			})
		},
		"datasets_command":     func(v *yaml.Node, f string) { d.str(v, f, &s.DatasetsCommand) },
		"pre_backup_command":   func(v *yaml.Node, f string) { d.str(v, f, &s.PreBackupCommand) },
		"post_backup_command":  func(v *yaml.Node, f string) { d.str(v, f, &s.PostBackupCommand) },
		"pre_restore_command":  func(v *yaml.Node, f string) { d.str(v, f, &s.PreRestoreCommand) },
		"post_restore_command": func(v *yaml.Node, f string) { d.str(v, f, &s.PostRestoreCommand) },
		"on_failure_command":   func(v *yaml.Node, f string) { d.str(v, f, &s.OnFailureCommand) },
		"params":               func(v *yaml.Node, f string) { d.params(v, f, &s.Params) },
		"timeout":              func(v *yaml.Node, f string) { d.duration(v, f, &s.Timeout) },
		"repository":           func(v *yaml.Node, f string) { d.str(v, f, &s.Repository) },
		"nice_level":           func(v *yaml.Node, f string) { s.NiceLevel = decodeNiceLevel(d, v, f) },
		"io_class":             func(v *yaml.Node, f string) { s.IOClass = decodeIOClass(d, v, f) },
		"replicate":            func(v *yaml.Node, f string) { s.Replicate = decodeReplicate(d, v, f) },
	})
	if root.Kind != yaml.MappingNode {
		return
	}
	if keys["name"] == nil {
		d.errorf(root, "name", "missing: every source needs a name")
		return
	}
	if keys["handler"] == nil {
		d.errorf(root, "handler", "missing: source %q needs a handler", s.Name)
	} else if cfg.Handler(s.Handler) == nil {
		d.errorf(keys["handler"], "handler", "unknown handler %q (known: %s)", s.Handler, strings.Join(cfg.handlerNames(), ", "))
	}
	if s.Schedule != "" {
		if err := checkSchedule(s.Schedule); err != nil {
			d.errorf(keys["schedule"], "schedule", "%v", err)
		}
	}
	switch {
	case keys["datasets"] != nil && keys["datasets_command"] != nil:
		d.errorf(keys["datasets_command"], "datasets_command", "give either datasets or datasets_command, not both")
	case keys["datasets"] == nil && keys["datasets_command"] == nil:
		d.errorf(root, "datasets", "missing: source %q needs datasets or a datasets_command", s.Name)
	}
	if keys["repository"] != nil {
		if cfg.Repository(s.Repository) == nil {
			d.errorf(keys["repository"], "repository", "unknown repository %q (known: %s)", s.Repository, strings.Join(cfg.repositoryNames(), ", "))
		}
	} else if r := cfg.DefaultRepository(); r != nil {
		s.Repository = r.Name
	}
	if prev := cfg.Source(s.Name); prev != nil {
		d.errorf(keys["name"], "name", "source %q is already defined in %s:%d", s.Name, prev.File, prev.Line)
		return
	}
	cfg.checkReplication(errs, s, s.Replicate, "replicate")
	for i, ds := range s.Datasets {
		cfg.checkReplication(errs, s, ds.Replicate, fmt.Sprintf("datasets[%d].replicate", i))
	}
	if h := cfg.Handler(s.Handler); h != nil {
		if _, err := NewHandler(h, s); err != nil {
			reportHandlerError(d, h, s, err)
		}
	}
	cfg.Sources = append(cfg.Sources, s)
}

func decodeDataset(d *decoder, n *yaml.Node, prefix string) *DatasetSpec {
	ds := &DatasetSpec{}
	keys := d.mapping(n, prefix, fields{
		"name": func(v *yaml.Node, f string) {
			if d.str(v, f, &ds.Name) {
				checkName(d, v, f, ds.Name)
			}
		},
		"atoms": func(v *yaml.Node, f string) {
			seen := map[string]bool{}
			d.sequence(v, f, func(_ int, item *yaml.Node, f string) {
				a := AtomSpec{}
				akeys := d.mapping(item, f, fields{
					"name": func(v *yaml.Node, f string) {
						if d.str(v, f, &a.Name) {
							checkName(d, v, f, a.Name)
						}
					},
					"path": func(v *yaml.Node, f string) {
						if d.str(v, f, &a.Path) {
							if err := checkAtomPath(a.Path); err != nil {
								d.errorf(v, f, "%v", err)
							}
						}
					},
				})
				if item.Kind != yaml.MappingNode {
					return
				}
				if akeys["name"] == nil {
					d.errorf(item, f+".name", "missing: every atom needs a name")
					return
				}
				if seen[a.Name] {
					d.errorf(akeys["name"], f+".name", "atom %q is defined more than once in this dataset", a.Name)
					return
				}
				seen[a.Name] = true
				ds.Atoms = append(ds.Atoms, a)
			})
		},
		"replicate": func(v *yaml.Node, f string) { ds.Replicate = decodeReplicate(d, v, f) },
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if keys["name"] == nil {
		d.errorf(n, prefix+".name", "missing: every dataset needs a name")
		return nil
	}
	return ds
}

// checkAtomPath accepts a path under the source root: relative, clean of
// "..", so that a backup cannot reach outside the root it was given.
func checkAtomPath(p string) error {
	if p == "" {
		return fmt.Errorf("an atom path cannot be empty")
	}
	if !filepath.IsLocal(p) {
		return fmt.Errorf("atom path %q must be relative to the source root and stay inside it", p)
	}
	return nil
}

// reportHandlerError turns a handler's complaint about its params into a
// ConfigError at the line of the param concerned.
func reportHandlerError(d *decoder, h *HandlerSpec, s *SourceSpec, err error) {
	var pe *handlers.ParamError
	if errors.As(err, &pe) {
		if p, ok := s.Params[pe.Param]; ok {
			*d.errs = append(*d.errs, &ConfigError{File: p.File, Line: p.Line, Field: "params." + pe.Param, Msg: pe.Msg})
			return
		}
		if p, ok := h.Params[pe.Param]; ok {
			*d.errs = append(*d.errs, &ConfigError{File: p.File, Line: p.Line, Field: "params." + pe.Param, Msg: pe.Msg})
			return
		}
		d.errorf(nil, "params."+pe.Param, "%s (handler %q, source %q)", pe.Msg, h.Name, s.Name)
		(*d.errs)[len(*d.errs)-1].Line = s.Line
		return
	}
	d.errorf(nil, "handler", "%v", err)
	(*d.errs)[len(*d.errs)-1].Line = s.Line
}

// NewHandler builds the handler a source uses: the handler's params, with the
// source's params on top. Relative paths in params are taken against the
// folder of the file that set them.
func NewHandler(h *HandlerSpec, s *SourceSpec) (handlers.Handler, error) {
	spec := handlers.Spec{Name: h.Name, Type: h.Type, Params: map[string]any{}, Dirs: map[string]string{}}
	for _, ps := range []Params{h.Params, s.Params} {
		for k, p := range ps {
			spec.Params[k] = p.Value
			dir, _ := filepath.Abs(filepath.Dir(p.File))
			spec.Dirs[k] = dir
		}
	}
	return handlers.New(spec)
}

func (cfg *Config) checkCrossReferences(errs *ConfigErrors) {
	// Names are checked as they are loaded; what is left is what needs the
	// whole picture. Nothing yet beyond that, but the hook keeps load() flat.
	_ = errs
}

func (cfg *Config) handlerNames() []string {
	var out []string
	for _, h := range cfg.Handlers {
		out = append(out, h.Name)
	}
	return out
}

func (cfg *Config) repositoryNames() []string {
	var out []string
	for _, r := range cfg.Repositories {
		out = append(out, r.Name)
	}
	if len(out) == 0 {
		return []string{"none defined in agent.yml"}
	}
	return out
}
