//go:build tools

// Package tools pins Argo CD's single main package (github.com/argoproj/argo-cd/v3/cmd,
// one binary that dispatches on its name) so that go.mod and go.sum cover everything
// hack/build-argocd.sh builds. The build tag keeps it out of every build.
package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
