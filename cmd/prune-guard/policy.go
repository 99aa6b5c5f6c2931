package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Work with policy files",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "default",
		Short: "Print the built-in policy as a file to start from",
		Example: `  prune-guard policy default > /etc/prune-guard/policy.yaml
  prune-guard check /etc/prune-guard/policy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := io.WriteString(cmd.OutOrStdout(), policy.DefaultYAML())
			return err
		},
	})
	return cmd
}

func newCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file",
		Long: `Validate a policy file the way "serve" loads it. On success it prints a summary and
exits 0; otherwise it prints every error with its file and line and exits 1.`,
		Example: `  prune-guard check /etc/prune-guard/policy.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: ok (policy %s, mode %s, audit %s, run labels %s, grace %s)\n", args[0], c.ShortHash(), c.Policy.Mode, c.Audit,
				strings.Join(c.Run.Labels, ","), c.Detection.Grace)
			fmt.Fprintf(w, "  detectors: %s\n", strings.Join(c.Detection.Names(), ", "))
			for i, r := range c.Policy.Rules {
				fmt.Fprintf(w, "  %d. %s\n", i+1, r)
			}
			return nil
		},
	}
}
