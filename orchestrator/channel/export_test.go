package channel

import (
	"context"

	"github.com/pkg/sftp"
)

// DownloadSFTP runs a download over any sftp client, so that tests can
// put a fake (hostile) server on the other end.
func DownloadSFTP(ctx context.Context, sc *sftp.Client, remote, local string, o CopyOptions) error {
	return download(ctx, sc, remote, local, o)
}
