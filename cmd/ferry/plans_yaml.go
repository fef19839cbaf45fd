package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/ferrydr/ferry/controller/api"
)

// Plans as code: a YAML file holds one plan per document. The file is read
// as a yaml.Node tree first so that every refusal — an unknown key, an
// unknown machine or agent, a machine in two groups — names the line it is
// on; only then is it decoded into api.Plan and sent whole.

// planKeys are the keys each level of a plan document takes.
var planKeys = map[string][]string{
	"plan":   {"name", "groups"},
	"group":  {"machines", "pre", "post"},
	"member": {"name", "ips"},
	"action": {"script", "on", "timeout", "undo", "manual"},
}

// levelNames name each level in messages.
var levelNames = map[string]string{"plan": "a plan", "group": "a group", "member": "a machine entry", "action": "an action"}

// planDoc is one plan read from a file, with the lines its parts are on.
type planDoc struct {
	plan     api.Plan
	line     int               // the document's
	nameLine int               // the name's
	machines map[[2]int]int    // (group index, machine index) → line
	ips      map[[2]int][]ipAt // → the member's re-IP ("ips"), each with its line
	actions  map[actionPos]int // → line of the action
	onLines  map[actionPos]int // → line of its "on" value
}

// ipAt is one re-IP address of a member and the line it is on.
type ipAt struct {
	ip   api.NICAddress
	line int
}

type actionPos struct {
	group int
	phase string
	index int
}

// fileErrors gathers every problem of a file, each as FILE:LINE: text.
type fileErrors struct {
	file string
	errs []string
}

func (f *fileErrors) add(line int, format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf("%s:%d: ", f.file, line)+fmt.Sprintf(format, args...))
}

func (f *fileErrors) err() error {
	if len(f.errs) == 0 {
		return nil
	}
	return api.Errorf(api.CodeInvalid, "%s", strings.Join(f.errs, "\n"))
}

// parsePlanFile reads every plan document of a file, refusing unknown
// keys, wrong shapes, bad durations and a machine in two groups.
func parsePlanFile(file string, data []byte) ([]planDoc, error) {
	fe := &fileErrors{file: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []planDoc
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, api.Errorf(api.CodeInvalid, "%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		if n.Kind != yaml.DocumentNode || len(n.Content) == 0 {
			continue
		}
		root := n.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document
		}
		d := planDoc{line: root.Line, machines: map[[2]int]int{}, ips: map[[2]int][]ipAt{}, actions: map[actionPos]int{}, onLines: map[actionPos]int{}}
		if walkPlan(fe, root, &d) {
			if err := root.Decode(&d.plan); err != nil {
				fe.add(root.Line, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
				continue
			}
			d.fillIPs()
			checkPlanDoc(fe, &d)
			docs = append(docs, d)
		}
	}
	seen := map[string]int{}
	for _, d := range docs {
		if first, ok := seen[d.plan.Name]; ok {
			fe.add(d.nameLine, "plan %q is also defined at line %d", d.plan.Name, first)
		}
		seen[d.plan.Name] = d.nameLine
	}
	if len(docs) == 0 && len(fe.errs) == 0 {
		fe.add(1, "no plan in the file")
	}
	return docs, fe.err()
}

// mapping checks that n is a mapping with only the keys of its level, and
// returns its values by key. Unknown keys are reported and dropped from the
// tree, so that the rest of the file is still decoded and checked: one run
// shows every problem.
func mapping(fe *fileErrors, n *yaml.Node, level string) (map[string]*yaml.Node, bool) {
	if n.Kind != yaml.MappingNode {
		fe.add(n.Line, "%s must be a mapping (keys %s)", levelNames[level], strings.Join(planKeys[level], ", "))
		return nil, false
	}
	out := map[string]*yaml.Node{}
	var kept []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.Contains(planKeys[level], k.Value) {
			fe.add(k.Line, "unknown key %q in %s (it takes %s)", k.Value, levelNames[level], strings.Join(planKeys[level], ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			fe.add(k.Line, "key %q given twice", k.Value)
			continue
		}
		out[k.Value] = v
		kept = append(kept, k, v)
	}
	n.Content = kept
	return out, true
}

func sequence(fe *fileErrors, n *yaml.Node, what string) bool {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return true // "pre:" with nothing after it
	}
	if n.Kind != yaml.SequenceNode {
		fe.add(n.Line, "%s must be a list", what)
		return false
	}
	return true
}

func scalar(fe *fileErrors, n *yaml.Node, what string) bool {
	if n.Kind != yaml.ScalarNode {
		fe.add(n.Line, "%s must be a single value", what)
		return false
	}
	return true
}

// walkPlan checks a plan document's shape and records its lines; false
// means the document cannot be decoded (a value of the wrong kind).
func walkPlan(fe *fileErrors, root *yaml.Node, d *planDoc) bool {
	top, ok := mapping(fe, root, "plan")
	if !ok {
		return false
	}
	d.nameLine = root.Line
	if n, has := top["name"]; !has {
		fe.add(root.Line, "a plan needs a name")
		ok = false
	} else {
		d.nameLine = n.Line
		ok = scalar(fe, n, "name") && ok
	}
	groups, has := top["groups"]
	if !has || !sequence(fe, groups, "groups") {
		return ok
	}
	for gi, gn := range groups.Content {
		g, gok := mapping(fe, gn, "group")
		if !gok {
			ok = false
			continue
		}
		if ms, has := g["machines"]; has && sequence(fe, ms, "machines") {
			for mi, m := range ms.Content {
				pos := [2]int{gi, mi}
				if m.Kind == yaml.MappingNode {
					name, mok := walkMember(fe, m, d, pos)
					if !mok {
						ok = false
						continue
					}
					ms.Content[mi] = name // decoded as a plain machine name
					m = name
				}
				ok = scalar(fe, m, "a machine") && ok
				d.machines[pos] = m.Line
			}
		}
		for _, phase := range []string{api.PhasePre, api.PhasePost} {
			as, has := g[phase]
			if !has || !sequence(fe, as, phase) {
				continue
			}
			for ai, an := range as.Content {
				a, aok := mapping(fe, an, "action")
				if !aok {
					ok = false
					continue
				}
				pos := actionPos{gi, phase, ai}
				d.actions[pos] = an.Line
				for k, v := range a {
					if !scalar(fe, v, k) {
						ok = false
					}
				}
				if on, has := a["on"]; has {
					d.onLines[pos] = on.Line
				}
				if t, has := a["timeout"]; has && t.Kind == yaml.ScalarNode {
					bad := false
					if dur, err := api.ParseDuration(t.Value); err != nil {
						fe.add(t.Line, "timeout: %v", err)
						bad = true
					} else if dur <= 0 {
						fe.add(t.Line, "timeout must be positive")
						bad = true
					}
					if bad { // reported; neutral for the checks that follow
						t.Value, t.Tag, t.Style = "0s", "!!str", 0
					}
				}
			}
		}
	}
	return ok
}

// walkMember reads a machine entry written as a mapping — its name and its
// re-IP ("ips": a list of NIC=ADDR/PREFIX[,GATEWAY], as protect's --ip
// takes) — and returns its name's node.
func walkMember(fe *fileErrors, n *yaml.Node, d *planDoc, pos [2]int) (*yaml.Node, bool) {
	mm, _ := mapping(fe, n, "member")
	name, has := mm["name"]
	if !has {
		fe.add(n.Line, "a machine entry needs a name")
		return nil, false
	}
	if !scalar(fe, name, "a machine's name") {
		return nil, false
	}
	ips, has := mm["ips"]
	if !has || !sequence(fe, ips, "ips") {
		return name, true
	}
	for _, in := range ips.Content {
		if !scalar(fe, in, "an ips entry") {
			continue
		}
		parsed, err := parsePlanIPs([]string{in.Value})
		if err != nil {
			fe.add(in.Line, "%v", err)
			continue
		}
		d.ips[pos] = append(d.ips[pos], ipAt{parsed[0], in.Line})
	}
	return name, true
}

// fillIPs puts the members' re-IP read by walkMember into the decoded plan.
func (d *planDoc) fillIPs() {
	for pos, ats := range d.ips {
		if pos[0] >= len(d.plan.Groups) {
			continue
		}
		g := &d.plan.Groups[pos[0]]
		if pos[1] >= len(g.Machines) {
			continue
		}
		if g.IPs == nil {
			g.IPs = map[string][]api.NICAddress{}
		}
		for _, a := range ats {
			g.IPs[g.Machines[pos[1]]] = append(g.IPs[g.Machines[pos[1]]], a.ip)
		}
	}
}

// checkPlanDoc checks what needs no controller: each action's shape and
// that a machine is in one group only.
func checkPlanDoc(fe *fileErrors, d *planDoc) {
	if d.plan.Name == "" {
		fe.add(d.nameLine, "a plan needs a name")
	}
	type at struct{ group, line int }
	seen := map[string]at{}
	for gi, g := range d.plan.Groups {
		for mi, m := range g.Machines {
			line := d.machines[[2]int{gi, mi}]
			if first, ok := seen[m]; ok {
				if first.group == gi+1 {
					fe.add(line, "machine %q is listed twice in group %d (line %d)", m, gi+1, first.line)
				} else {
					fe.add(line, "machine %q is already in group %d (line %d): a machine belongs to one group of a plan", m, first.group, first.line)
				}
				continue
			}
			seen[m] = at{gi + 1, line}
		}
		for _, phase := range []string{api.PhasePre, api.PhasePost} {
			for ai, a := range phaseActions(g, phase) {
				if err := a.Check(); err != nil {
					fe.add(d.actions[actionPos{gi, phase, ai}], "%v", err)
				}
			}
		}
	}
}

func phaseActions(g api.PlanGroup, phase string) []api.PlanAction {
	if phase == api.PhasePre {
		return g.Pre
	}
	return g.Post
}

// checkPlanNames checks the machines and agents a plan names against the
// controller's, so that the refusal names the file's line; the controller
// checks them again when the plan is applied.
func checkPlanNames(fe *fileErrors, d planDoc, machines []api.Machine, agents []api.Agent) {
	for gi, g := range d.plan.Groups {
		for mi, m := range g.Machines {
			i := slices.IndexFunc(machines, func(x api.Machine) bool { return x.Name == m })
			if i < 0 {
				fe.add(d.machines[[2]int{gi, mi}], "machine %q is not protected: protect it before adding it to plan %q", m, d.plan.Name)
				continue
			}
			checkMemberIPs(fe, machines[i], d.ips[[2]int{gi, mi}])
		}
		for _, phase := range []string{api.PhasePre, api.PhasePost} {
			for ai, a := range phaseActions(g, phase) {
				if a.On == "" {
					continue
				}
				i := slices.IndexFunc(agents, func(x api.Agent) bool { return x.Name == a.On })
				switch {
				case i < 0:
					fe.add(d.onLines[actionPos{gi, phase, ai}], "agent %q is not enrolled", a.On)
				case agents[i].Allows != nil && !agents[i].Allows.PlanScripts: // nil: not connected, the agent checks
					fe.add(d.onLines[actionPos{gi, phase, ai}], "plan scripts are not allowed on agent %s: install or run it with --allow-plan-scripts", a.On)
				}
			}
		}
	}
}

// checkMemberIPs checks a member's re-IP against the machine's NICs, each
// refusal on its entry's line.
func checkMemberIPs(fe *fileErrors, m api.Machine, ats []ipAt) {
	var ips []api.NICAddress
	for _, a := range ats {
		ips = append(ips, a.ip)
		if err := api.CheckNICAddresses(m.NICs, ips); err != nil {
			fe.add(a.line, "machine %s: %v", m.Name, err)
			return
		}
	}
}

func newPlanApplyCommand(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f plan.yaml",
		Short: "Create or replace the plans of a YAML file, printing what changed",
		Long: `Create each plan of a YAML file (one plan per document), or replace it whole
when it exists, and print one line per change; nothing is printed, and nothing
changes, when every plan already is as the file says. The file is checked as a
whole first: unknown keys, machines that are not protected, agents that are not
enrolled and a machine in two groups are refused with the file's line numbers,
and nothing is applied. -f - reads standard input. The format is the one
'ferry plans export' prints; see docs/plans.md.`,
		Args: exactArgs(0, "no arguments (the file comes with -f)"),
		RunE: func(c *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("-f FILE is required")
			}
			return runPlanApply(c.Context(), g, file)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the YAML file (- for standard input)")
	return cmd
}

func runPlanApply(ctx context.Context, g *globals, file string) error {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return err
	}
	docs, err := parsePlanFile(file, data)
	if err != nil {
		return err
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	machines, err := cl.Machines(ctx)
	if err != nil {
		return err
	}
	agents, err := cl.Agents(ctx)
	if err != nil {
		return err
	}
	fe := &fileErrors{file: file}
	for _, d := range docs {
		checkPlanNames(fe, d, machines, agents)
	}
	if err := fe.err(); err != nil {
		return err
	}
	results := []api.PlanApplyResult{}
	for _, d := range docs {
		res, err := cl.ApplyPlan(ctx, d.plan)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", file, d.line, err)
		}
		results = append(results, res)
		if !g.json {
			for _, c := range res.Changes {
				fmt.Fprintln(g.stdout, c)
			}
		}
	}
	if g.json {
		return g.printJSON(results)
	}
	return nil
}

func newPlanExportCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export PLAN",
		Short: "Print a plan as YAML that 'ferry plans apply' takes back unchanged",
		Args:  exactArgs(1, "PLAN"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			p, err := cl.Plan(c.Context(), args[0])
			if err != nil {
				return err
			}
			b, err := planYAML(p)
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(b)
			return err
		},
	}
}

// planYAML is a plan as a YAML document, each group headed by a comment
// with its number (numbers follow the order; the file does not carry them).
func planYAML(p api.Plan) ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(p); err != nil {
		return nil, err
	}
	n.HeadComment = fmt.Sprintf("Ferry recovery plan %s: ferry plans apply -f FILE", p.Name)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "groups" {
			for gi, gn := range n.Content[i+1].Content {
				gn.HeadComment = fmt.Sprintf("group %d", gi+1)
				if err := exportMemberIPs(gn, p.Groups[gi]); err != nil {
					return nil, err
				}
			}
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// exportMemberIPs writes each member with a re-IP as a mapping (name, ips)
// in its group's machines list; the others stay plain names.
func exportMemberIPs(gn *yaml.Node, g api.PlanGroup) error {
	for i := 0; i+1 < len(gn.Content); i += 2 {
		if gn.Content[i].Value != "machines" {
			continue
		}
		for mi, mn := range gn.Content[i+1].Content {
			ips := g.IPsOf(mn.Value)
			if len(ips) == 0 {
				continue
			}
			var strs []string
			for _, ip := range ips {
				strs = append(strs, ip.String())
			}
			var entry yaml.Node
			if err := entry.Encode(struct {
				Name string   `yaml:"name"`
				IPs  []string `yaml:"ips"`
			}{mn.Value, strs}); err != nil {
				return err
			}
			gn.Content[i+1].Content[mi] = &entry
		}
	}
	return nil
}
