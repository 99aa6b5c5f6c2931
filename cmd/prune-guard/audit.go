package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/auditlog"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// defaultAuditFile is where scripts/quickstart.sh has serve write the log.
const defaultAuditFile = "/var/log/prune-guard/audit.jsonl"

type auditOptions struct {
	since   string
	denied  bool
	json    bool
	summary bool
}

func newAuditCmd() *cobra.Command {
	o := auditOptions{}
	cmd := &cobra.Command{
		Use:   "audit [FILE]",
		Short: "Summarize the audit log: decisions by rule, operation and user, top denied commands",
		Long: `Read the audit log that "prune-guard serve --audit-log" writes and show the
matching lines in a readable form (time, decision, rule, operation, method, URI,
runs), then a summary: decisions by rule, by operation and by user (a client
dockerd did not authenticate with a TLS certificate shows as "(local)"), and the
commands refused most often, with their queries decoded for reading.

FILE defaults to ` + defaultAuditFile + `; "-" reads standard input.
A gzip-compressed file, as logrotate leaves it, is read as it is. The log is
streamed, never loaded, so the lines come first and the summary last. Times are
shown in UTC.

Lines with a decision field are decisions (allow, deny, would-deny); the others
are events (prune-guard started, policy loaded, policy rejected). A line that is
not a JSON audit record, such as one cut short by a crash, is counted and
reported ("3 lines were not JSON audit records"), never fatal.

--denied keeps deny and would-deny decisions: what the policy refused, and what
a warn rule (or "mode: warn") would refuse once enforced, which is how a policy
being rolled out is reviewed. The decision column tells the two apart; events
are left out.

--json writes the matching lines unchanged, one JSON object a line, and then the
summary as one object, {"summary": {...}}, on the last line. The summary's keys
are the recorded values ("" for no rule and for a local user).

The log is owner-only (0600): read it as root, or give a group read access with
"serve --audit-group". To read a file named "replay" or "cache", write ./replay
or ./cache.

Pull records (a line with a pull field: every image pull prune-guard saw) are
not decisions; they are listed and counted as events ("image pull"). "prune-guard
audit cache" reports on them.`,
		Example: `  sudo prune-guard audit
  sudo prune-guard audit --since 24h --denied
  sudo prune-guard audit --since 2026-11-26T09:00:00Z --summary
  sudo prune-guard audit /var/log/prune-guard/audit.jsonl.2.gz
  sudo cat /var/log/prune-guard/audit.jsonl.1 /var/log/prune-guard/audit.jsonl | prune-guard audit --since 168h -
  sudo prune-guard audit --json --denied | jq -c 'select(.summary | not) | [.time, .rule, .uri]'
  sudo prune-guard audit --json --summary | jq .summary.by_rule`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			since, err := auditlog.ParseSince(o.since, time.Now())
			if err != nil {
				return fmt.Errorf("--since %w", err)
			}
			in, name, err := openAuditLog(cmd, args)
			if err != nil {
				return err
			}
			defer in.Close()
			s, err := auditlog.Report(in, cmd.OutOrStdout(), auditlog.Options{
				Filter:      auditlog.Filter{Since: since, Denied: o.denied},
				JSON:        o.json,
				SummaryOnly: o.summary,
			})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if o.json {
				// The text summary carries this note; JSON readers
				// may only look at the lines, so say it on stderr too.
				warnSkipped(cmd, name, s.Skipped, s.TooLong, s.FirstSkipped)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.since, "since", "", "only lines from this long ago (a Go duration: 24h, 90m, 168h) or from this time on (RFC 3339: 2026-11-26T09:00:00Z)")
	f.BoolVar(&o.denied, "denied", false, "only deny and would-deny decisions (no allows, no events)")
	f.BoolVar(&o.json, "json", false, `the matching lines unchanged as JSON lines, then the summary as {"summary": {...}} on the last line`)
	f.BoolVar(&o.summary, "summary", false, "only the summary, not the matching lines")
	cmd.AddCommand(newAuditReplayCmd(), newAuditCacheCmd())
	return cmd
}

type replayOptions struct {
	policyFile string
	since      string
	json       bool
}

func newAuditReplayCmd() *cobra.Command {
	o := replayOptions{}
	cmd := &cobra.Command{
		Use:   "replay --policy NEW [FILE]",
		Short: "Replay recorded requests against another policy and list the decisions that would change",
		Long: `Decide every request recorded in the audit log again under the policy NEW, and
list each decision that would change (allow -> deny, deny -> allow, and changes
to or from would-deny) with its old and new rule, then the counts. Run it before
rolling a policy out; "mode: warn" then shows what the log could not.

FILE is read as by "prune-guard audit" (default ` + defaultAuditFile + `,
"-" for standard input, gzip read as it is).

Replay cannot ask the engine again, so what a decision learnt from the engine is
taken from the record:

  - A CI run was active iff the line's runs field lists one. A decision that
    never reached a run-active rule recorded no runs, so it replays as "no run
    active"; a recorded "unknown: REASON" replays as an unknown run state. The
    run labels of NEW are not evaluated: the runs are those the recorded labels
    found.
  - An image or plugin is protected iff the line's protected field says so
    (the recorded decision asked and found it protected), whatever the rule is
    named. A line without it, written before prune-guard recorded it or by a
    decision that found nothing protected, counts as protected iff its rule is
    conditioned on protection in its policy, when that policy is NEW or the
    built-in one, and otherwise iff the recorded rule was keep-protected or
    protect-self. The protect settings of NEW are not evaluated, so protecting
    more images shows no change here.
  - Requests are read again from their recorded method and URI (credentials in
    it were redacted when it was written). Headers and bodies are not recorded:
    where the recorded decision assumed the worst because of them, its
    operation stands.

Events, and decisions recorded without a method or URI, are passed over.
Decisions that stay the same under another rule are counted, not listed.

--json writes each change as a JSON object ({"line", "time", "method", "uri",
"operation", "old": {"decision", "rule"}, "new": {...}}) and the counts as
{"summary": {...}} on the last line.

Exit status: 0 when the log was read, whether or not decisions change (this is a
report); 1 when NEW does not load or the log cannot be read.`,
		Example: `  prune-guard check new.yaml && sudo prune-guard audit replay --policy new.yaml
  sudo prune-guard audit replay --policy new.yaml --since 168h
  sudo prune-guard audit replay --policy new.yaml --json | jq -c 'select(.new.decision == "deny")'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := policy.Load(o.policyFile)
			if err != nil {
				return fmt.Errorf("--policy: %w", err)
			}
			since, err := auditlog.ParseSince(o.since, time.Now())
			if err != nil {
				return fmt.Errorf("--since %w", err)
			}
			in, name, err := openAuditLog(cmd, args)
			if err != nil {
				return err
			}
			defer in.Close()
			builtIn := policy.Default()
			r, err := auditlog.Replay(in, cmd.OutOrStdout(), cfg.Policy, auditlog.ReplayOptions{
				Since:      since,
				JSON:       o.json,
				PolicyName: fmt.Sprintf("%s (policy %s)", o.policyFile, cfg.ShortHash()),
				// The policies replay can know a line was decided
				// under: NEW itself, and the built-in one.
				Recorded: map[string]*rules.Policy{builtIn.ShortHash(): builtIn.Policy, cfg.ShortHash(): cfg.Policy},
			})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if o.json {
				warnSkipped(cmd, name, r.Skipped, r.TooLong, r.FirstSkipped)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.policyFile, "policy", "", "the policy file to replay against (required; see 'prune-guard check')")
	f.StringVar(&o.since, "since", "", "only decisions from this long ago (24h, 90m) or from this time on (RFC 3339)")
	f.BoolVar(&o.json, "json", false, `each change as a JSON object, then the counts as {"summary": {...}}`)
	cmd.MarkFlagRequired("policy")
	return cmd
}

type cacheOptions struct {
	since    string
	at       string
	hubLimit int64
	json     bool
}

func newAuditCacheCmd() *cobra.Command {
	o := cacheOptions{}
	cmd := &cobra.Command{
		Use:   "cache [FILE]",
		Short: "How well the image cache works: pulls and hits by registry, Docker Hub's rate limit, images evicted too early",
		Long: `Read the pull records in the audit log (prune-guard records every image pull,
POST /images/create with fromImage, in both modes) and reclaim's removals, and
report:

  - per registry (docker.io for Docker Hub, host[:port] otherwise): the pulls,
    the hits (the image was local before the pull: only a manifest check went
    to the registry), the misses, the unknown (the engine did not answer, or
    the pull named every tag) and the hit ratio, hits among hits and misses;
    in proxy mode also the layers reused and downloaded and the bytes
    downloaded, from the pulls' progress;
  - Docker Hub's pulls in the 6 hours to now (or --at) against --hub-limit.
    Docker Hub documents, per 6 hours: 100 pulls for unauthenticated users
    (per IPv4 address or IPv6 /64 subnet), 200 for a Docker Personal account,
    no limit for Pro, Team and Business (docs.docker.com/docker-hub/usage/pulls/;
    check it, it has changed before). It counts a pull by its manifest
    requests, so a hit may count as one; prune-guard counts every pull the
    engine was asked for;
  - the images reclaim removed that were pulled again within 24 hours
    ("evicted too early"), each with what would have kept it: a longer
    --min-age, protecting its repository (--protect-image, or protect.images in
    the policy file), or --keep-per-repo (reclaim's keep-N rule, where reclaim
    has it). Reclaim's removals are in the log
    reclaim writes (reclaim --audit-log); give the same file to both, or
    concatenate the two logs on standard input.

FILE is read as by "prune-guard audit" (default ` + defaultAuditFile + `, "-" for
standard input, gzip read as it is). --since leaves out older pulls and
removals; the Docker Hub window counts every line read.

--json writes the report as one JSON object: "registries" (pulls, hit, miss,
unknown, hit_ratio, failed, relayed, layers_reused, layers_downloaded,
bytes_downloaded), "docker_hub" (window_start, window_end, pulls, limit) and
"evicted_too_early" (reference, image, removed, pulled_again, last_used, why,
change: min_age or raise_min_age_by, protect_image, keep_per_repo).`,
		Example: `  sudo prune-guard audit cache
  sudo prune-guard audit cache --since 168h
  sudo prune-guard audit cache --hub-limit 200          # a Docker Personal account
  sudo prune-guard audit cache --at 2026-11-26T14:00:00Z
  sudo prune-guard audit cache --json | jq '.registries[] | {registry, hit_ratio}'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			now := time.Now()
			since, err := auditlog.ParseSince(o.since, now)
			if err != nil {
				return fmt.Errorf("--since %w", err)
			}
			at := now
			if o.at != "" {
				if at, err = time.Parse(time.RFC3339, o.at); err != nil {
					return fmt.Errorf("--at %q: want an RFC 3339 time such as 2026-11-26T14:00:00Z", o.at)
				}
			}
			if o.hubLimit < 0 {
				return fmt.Errorf("--hub-limit %d: want a number of pulls", o.hubLimit)
			}
			in, name, err := openAuditLog(cmd, args)
			if err != nil {
				return err
			}
			defer in.Close()
			c, err := auditlog.CacheReport(in, cmd.OutOrStdout(), auditlog.CacheOptions{Since: since, At: at, HubLimit: o.hubLimit, JSON: o.json})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if o.json {
				warnSkipped(cmd, name, c.Skipped, c.TooLong, c.FirstSkipped)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.since, "since", "", "only pulls and removals from this long ago (24h, 168h) or from this time on (RFC 3339)")
	f.StringVar(&o.at, "at", "", "judge the Docker Hub window as of this time (RFC 3339) instead of now, e.g. when pulls were refused")
	f.Int64Var(&o.hubLimit, "hub-limit", 100, "Docker Hub pulls allowed per 6 hours: 100 unauthenticated (per IP), 200 for a Personal account; paid plans have none")
	f.BoolVar(&o.json, "json", false, "the report as one JSON object")
	return cmd
}

// openAuditLog opens the log named by args: the default file, a path, or
// "-" for standard input. It returns a name for errors.
func openAuditLog(cmd *cobra.Command, args []string) (io.ReadCloser, string, error) {
	path := defaultAuditFile
	if len(args) > 0 {
		path = args[0]
	}
	if path == "-" {
		return io.NopCloser(cmd.InOrStdin()), "standard input", nil
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, "", fmt.Errorf("audit log: %w (the log is owner-only: read it as root, or let a group read it with 'serve --audit-group')", err)
		}
		return nil, "", fmt.Errorf("audit log: %w", err)
	}
	return f, path, nil
}

func warnSkipped(cmd *cobra.Command, name string, skipped, tooLong int64, first int) {
	if note := auditlog.SkippedNote(skipped, tooLong, first); note != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "prune-guard: %s: %s\n", name, note)
	}
}
