package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
)

// The ssh-config verb prints an OpenSSH block for a guest.
func init() {
	register(&command{
		name:    "ssh-config",
		args:    "NAME",
		summary: "print an OpenSSH config block for a guest (append it to ~/.ssh/config, then `ssh ldtlab-NAME`)",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef(fs, "need a VM name")
			}
			if _, _, err := lab.Socket(args[0]); err != nil {
				return err
			}
			dir, _ := lab.VMDir(args[0])
			keys, err := channel.LoadKeys(filepath.Join(dir, "keys"))
			if err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			state, err := lab.StateDir()
			if err != nil {
				return err
			}
			fmt.Print(sshConfig(args[0], exe, state, keys))
			return nil
		},
	})
}

// sshConfig is an OpenSSH client block that reaches the guest through
// `labctl proxy`: no TCP port, the per-VM key, and the guest's host key
// pinned (no trust on first use). The state directory is spelled out so
// that ssh from another shell (another LDTLAB_STATE, or none) finds the VM.
func sshConfig(name, labctl, state string, keys *channel.Keys) string {
	return fmt.Sprintf(`Host ldtlab-%[1]s
  HostName ldtlab-%[1]s
  User root
  ProxyCommand env LDTLAB_STATE=%[6]s %[2]s proxy %[1]s
  IdentityFile %[3]s
  IdentitiesOnly yes
  UserKnownHostsFile %[4]s
  HostKeyAlias %[5]s
  StrictHostKeyChecking yes
  PasswordAuthentication no
  LogLevel ERROR
`, name, shquote.Word(labctl), keys.ClientKeyPath(), keys.KnownHostsPath(), channel.HostKeyAlias, shquote.Word(state))
}
