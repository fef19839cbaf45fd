package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// examples is the Example section of each command's help, by command path.
// TestEveryCommandHasAnExample fails for a command missing here, so a new
// command gets its example when it is added.
var examples = map[string]string{
	"ferry": `ferry serve --data /var/lib/ferry
ferry tokens create --install-command
ferry protect web1 --agent host1 --disk /dev/sdb --target dr1 --wait
ferry failover web1 --wait`,
	"ferry serve": `ferry serve --data /var/lib/ferry
ferry serve --data /srv/ferry --listen :7443 --admin-listen 127.0.0.1:7444
ferry serve --data /srv/ferry --audit-rate 64MiB --audit-every 12h`,

	"ferry alerts":        "ferry alerts add oncall --webhook https://hooks.example.com/ferry --on rpo-breach,agent-lost",
	"ferry alerts add":    "ferry alerts add oncall --webhook https://hooks.example.com/ferry\nferry alerts add dr-team --webhook https://chat.example.com/hook/T0K --on rpo-breach,job-failed,drill-failed",
	"ferry alerts list":   "ferry alerts list\nferry alerts list --json",
	"ferry alerts show":   "ferry alerts show oncall\nferry alerts show oncall --json",
	"ferry alerts remove": "ferry alerts remove oncall",
	"ferry alerts test":   "ferry alerts test oncall",

	"ferry audit":      "ferry audit list",
	"ferry audit list": "ferry audit list\nferry audit list --limit 20\nferry audit list --json",

	"ferry tokens":        `ferry tokens create --ttl 1h --uses 3`,
	"ferry tokens create": "ferry tokens create\nferry tokens create --ttl 2h --uses 5 --install-command",
	"ferry tokens list":   "ferry tokens list\nferry tokens list --json",
	"ferry tokens revoke": "ferry tokens revoke 4f2a9c",

	"ferry agents":         "ferry agents list",
	"ferry agents list":    "ferry agents list\nferry agents list --json",
	"ferry agents show":    "ferry agents show host1\nferry agents show host1 --json",
	"ferry agents revoke":  "ferry agents revoke host1 --force",
	"ferry agents remove":  "ferry agents remove host1",
	"ferry agents upgrade": "ferry agents upgrade host1\nferry agents upgrade --all",
	"ferry inventory":      "ferry inventory host1\nferry inventory host1 --json",

	"ferry policies":        `ferry policies create gold --rp-every 15s --retention 7d`,
	"ferry policies create": "ferry policies create gold --rp-every 15s --app-every 1h --retention 7d\nferry policies create wan --bandwidth 20MiB/s --block-size 64KiB",
	"ferry policies update": "ferry policies update gold --retention 14d\nferry policies update gold --rpo-threshold 2m",
	"ferry policies list":   "ferry policies list\nferry policies list --json",
	"ferry policies delete": "ferry policies delete gold",

	"ferry status": "ferry status\nferry status --json",
	"ferry protect": `ferry protect web1 --agent host1 --disk /dev/sdb --target dr1
ferry protect db1 --agent host1 --disk os=/var/lib/libvirt/images/db1.qcow2 \
    --disk data=/var/lib/libvirt/images/db1-data.raw --policy gold --target dr1 --wait`,
	"ferry unprotect": "ferry unprotect web1\nferry unprotect web1 --delete-points          # lists the points it would delete\nferry unprotect web1 --delete-points --force",

	"ferry machines":      "ferry machines list",
	"ferry machines list": "ferry machines list\nferry machines list --json",
	"ferry machines show": "ferry machines show web1\nferry machines show web1 --json",
	"ferry machines update": `ferry machines update web1 --policy gold
ferry machines update web1 --add-disk data=/var/lib/libvirt/images/web1-data.raw
ferry machines update web1 --remove-disk scratch --target dr2`,

	"ferry drills":        "ferry drills create web1-boot --machine web1 --every 24h",
	"ferry drills create": "ferry drills create web1-boot --machine web1 --every 24h\nferry drills create db1-pg --machine db1 --every 12h --timeout 15m --probe 'pg_isready -h $FERRY_ADDR'\nferry drills create app-http --machine app1 --every 24h --port 443",
	"ferry drills list":   "ferry drills list\nferry drills list --json",
	"ferry drills show":   "ferry drills show web1-boot\nferry drills show web1-boot --json",
	"ferry drills run":    "ferry drills run web1-boot\nferry drills run web1-boot --no-wait",
	"ferry drills delete": "ferry drills delete web1-boot",

	"ferry points":        "ferry points list web1",
	"ferry points list":   "ferry points list web1\nferry points list web1 --json",
	"ferry points export": "ferry points export web1 --point latest --out /tmp/web1\nferry points export web1 --point 2026-12-01T09:30:00Z --out /tmp/web1 --key-file repo.key",
	"ferry points label":  "ferry points label web1 --point latest before-upgrade",
	"ferry points audit":  "ferry points audit\nferry points audit web1 --rate 64MiB --json",

	"ferry targets":        "ferry targets add dr1 --agent drhost --dir /var/lib/ferry-dr",
	"ferry targets add":    "ferry targets add dr1 --agent drhost --dir /var/lib/ferry-dr --driver libvirt\nferry targets add dr2 --agent drhost --dir /srv/dr --driver exec \\\n    --start '/etc/ferry/process.sh start' --stop '/etc/ferry/process.sh stop' \\\n    --status '/etc/ferry/process.sh status'",
	"ferry targets list":   "ferry targets list\nferry targets list --json",
	"ferry targets remove": "ferry targets remove dr1          # shows what would be removed\nferry targets remove dr1 --force",

	"ferry plans":                "ferry plans create app\nferry plans add-group app db1\nferry plans add-group app app1 app2",
	"ferry plans create":         "ferry plans create app",
	"ferry plans list":           "ferry plans list\nferry plans list --json",
	"ferry plans show":           "ferry plans show app\nferry plans show app --json",
	"ferry plans delete":         "ferry plans delete app",
	"ferry plans add-group":      "ferry plans add-group app db1\nferry plans add-group app app1 app2",
	"ferry plans add-machine":    "ferry plans add-machine app --group 2 app3\nferry plans add-machine app --group 2 app4 --ip lan=192.0.2.14/24,192.0.2.1",
	"ferry plans remove-machine": "ferry plans remove-machine app app3",
	"ferry plans add-action": `ferry plans add-action app --group 1 --post --script '/etc/ferry/db-ready.sh' --on dbhost --timeout 2m
ferry plans add-action app --group 2 --pre --script 'dns-switch app.example.com' --undo 'dns-switch --back app.example.com'
ferry plans add-action app --group 2 --post --manual 'Check that the shop takes orders'`,
	"ferry plans apply":  "ferry plans apply -f examples/plans/three-tier.yaml\nferry plans export app | ferry plans apply -f -",
	"ferry plans export": "ferry plans export app > app.yaml",

	"ferry failover":     "ferry failover web1 --wait\nferry failover web1 --test --wait\nferry failover web1 --planned --wait\nferry failover web1 --point latest-app-consistent --dry-run\nferry failover web1 --point 42 --allow-damaged --wait\nferry failover --plan app --dry-run\nferry failover --plan app --planned --wait",
	"ferry commit":       "ferry commit web1                 # lists the points it would delete\nferry commit web1 --force --wait\nferry commit --plan app --force --wait",
	"ferry change-point": "ferry change-point web1 --point 42 --wait\nferry change-point --plan app --point 2026-03-01T09:00:00Z --wait",
	"ferry cleanup":      "ferry cleanup web1 --wait",
	"ferry reprotect":    "ferry reprotect web1 --wait\nferry reprotect web1 --source-is-off --wait",
	"ferry failback":     "ferry failback web1 --wait\nferry failback web1 --test --wait\nferry failback --plan app --wait",
	"ferry revert":       "ferry revert web1 --wait",
	"ferry cancel":       "ferry cancel 7c1e0b --force",

	"ferry jobs":        "ferry jobs list",
	"ferry jobs list":   "ferry jobs list\nferry jobs list --json",
	"ferry jobs show":   "ferry jobs show 7c1e0b\nferry jobs show 7c1e0b --json",
	"ferry jobs watch":  "ferry jobs watch 7c1e0b\nferry jobs watch 7c1e0b --json | jq -r .state",
	"ferry jobs resume": "ferry jobs show 7c1e0b   # Waiting: Check that the shop takes orders …\nferry jobs resume 7c1e0b",

	"ferry keys":          "ferry keys generate --out /root/ferry-keys",
	"ferry keys generate": "ferry keys generate --out /root/ferry-keys",
	"ferry verify":        "ferry verify\nferry verify web1 --json",
	"ferry gc":            "ferry gc",
	"ferry version":       "ferry version",

	"ferry help": "ferry help protect",
	"ferry completion": `source <(ferry completion bash)
ferry completion zsh > "${fpath[1]}/_ferry"`,
	"ferry completion bash":       "source <(ferry completion bash)\nferry completion bash > /etc/bash_completion.d/ferry",
	"ferry completion zsh":        `ferry completion zsh > "${fpath[1]}/_ferry"`,
	"ferry completion fish":       "ferry completion fish > ~/.config/fish/completions/ferry.fish",
	"ferry completion powershell": "ferry completion powershell | Out-String | Invoke-Expression",
}

// finishCommands completes the tree the way `ferry` runs it: the help and
// completion commands cobra adds, an Example for each command, dynamic
// completion, and no "auto generated" date in generated docs.
func finishCommands(g *globals, root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.DisableAutoGenTag = true
		if ex, ok := examples[c.CommandPath()]; ok && c.Example == "" {
			c.Example = indent(ex)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	addCompletions(g, root)
}

// indent indents each line by two spaces, as cobra's help shows examples.
func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
