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

// UploadSFTP runs an upload over any sftp client.
func UploadSFTP(ctx context.Context, sc *sftp.Client, local, remote string, o CopyOptions) error {
	return upload(ctx, sc, local, remote, o)
}

// SFTPOptions are the options Upload and Download give their sftp client.
var SFTPOptions = sftpOptions
