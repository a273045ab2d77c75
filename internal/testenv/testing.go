package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kpath/kpath/internal/testutil"
)

// StartForTest starts a control plane for t, stopped when t ends. Without
// the binaries it skips (fails under KPATH_REQUIRE_PRIVILEGED=1).
func StartForTest(t testing.TB, opts Options) *Env {
	t.Helper()
	if opts.BinDir == "" {
		dir, err := BinDir()
		if err != nil {
			testutil.SkipOrFail(t, err.Error())
		}
		opts.BinDir = dir
	}
	if _, err := os.Stat(filepath.Join(opts.BinDir, "kube-apiserver")); err != nil {
		testutil.SkipOrFail(t, "kube-apiserver not built in "+opts.BinDir+": run make k8s-bins")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		testutil.SkipOrFail(t, "etcd not installed (Debian package etcd-server)")
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.Log = t.Logf
	env, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(env.Stop)
	return env
}
