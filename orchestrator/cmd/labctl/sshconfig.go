package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

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
				fs.Usage()
				return errors.New("need a VM name")
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
			fmt.Print(sshConfig(args[0], exe, keys))
			return nil
		},
	})
}

// sshConfig is an OpenSSH client block that reaches the guest through
// `labctl proxy`: no TCP port, the per-VM key, and the guest's host key
// pinned (no trust on first use).
func sshConfig(name, labctl string, keys *channel.Keys) string {
	return fmt.Sprintf(`Host ldtlab-%[1]s
  HostName ldtlab-%[1]s
  User root
  ProxyCommand %[2]s proxy %[1]s
  IdentityFile %[3]s
  IdentitiesOnly yes
  UserKnownHostsFile %[4]s
  HostKeyAlias %[5]s
  StrictHostKeyChecking yes
  PasswordAuthentication no
  LogLevel ERROR
`, name, labctl, keys.ClientKeyPath(), keys.KnownHostsPath(), channel.HostKeyAlias)
}
