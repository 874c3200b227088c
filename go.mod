module ldtlab

go 1.26.8

require (
	github.com/creack/pty v1.1.24
	github.com/hashicorp/yamux v0.1.2
	github.com/pkg/sftp v1.13.12
	github.com/stretchr/testify v1.12.1
	golang.org/x/crypto v0.58.0
	golang.org/x/sys v0.49.0
	golang.org/x/term v0.47.0
)

require (
	github.com/kr/fs v0.1.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
