package main

import (
	"fmt"

	"ldtlab/orchestrator/channel"
)

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
