package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func testSpec(data string) Spec {
	return Spec{
		Ref: "kpath/test:v1", Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Entrypoint: []string{"/usr/bin/prog"},
		Files: []File{
			{Path: "/usr/bin/prog", Mode: 0o755, Data: []byte(data)},
			{Path: "/etc/prog/conf", Mode: 0o644, Data: []byte("x")},
		},
	}
}

func readTar(t *testing.T, file string) map[string][]byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = b
	}
}

// TestBuildIsReproducible: two builds of the same files give one digest
// and byte-identical tarballs (files given in another order too); other
// contents give another digest.
func TestBuildIsReproducible(t *testing.T) {
	dir := t.TempDir()
	var digests []v1.Hash
	var tars [][]byte
	for i, s := range []Spec{testSpec("a"), testSpec("a"), testSpec("b")} {
		if i == 1 {
			s.Files[0], s.Files[1] = s.Files[1], s.Files[0]
		}
		img, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "img.tar")
		if err := WriteLayout(file, s.Ref, img); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(file)
		digests, tars = append(digests, d), append(tars, b)
	}
	if digests[0] != digests[1] || !bytes.Equal(tars[0], tars[1]) {
		t.Errorf("two builds: digests %s and %s, tarballs equal %v", digests[0], digests[1], bytes.Equal(tars[0], tars[1]))
	}
	if digests[0] == digests[2] {
		t.Error("other contents, same digest")
	}
}

// TestLayoutNamesPlatformAndBlobs: the tarball is an OCI image layout whose
// index names the image as containerd does and carries its platform, every
// blob the manifest references is inside, and the config has the platform
// and entrypoint.
func TestLayoutNamesPlatformAndBlobs(t *testing.T) {
	s := testSpec("a")
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "img.tar")
	if err := WriteLayout(file, s.Ref, img); err != nil {
		t.Fatal(err)
	}
	files := readTar(t, file)
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", files["oci-layout"])
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	m := idx.Manifests[0]
	if m.Annotations[annotationContainerdName] != "docker.io/kpath/test:v1" || m.Annotations[annotationRefName] != "v1" {
		t.Errorf("index annotations %v", m.Annotations)
	}
	if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index platform %v", m.Platform)
	}
	blob := func(h v1.Hash) []byte {
		b, ok := files["blobs/sha256/"+h.Hex]
		if !ok {
			t.Fatalf("blob %s missing", h)
		}
		if got, _, _ := v1.SHA256(bytes.NewReader(b)); got != h {
			t.Fatalf("blob %s has digest %s", h, got)
		}
		return b
	}
	var man v1.Manifest
	if err := json.Unmarshal(blob(m.Digest), &man); err != nil {
		t.Fatal(err)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(blob(man.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || strings.Join(cfg.Config.Entrypoint, " ") != "/usr/bin/prog" {
		t.Errorf("config %+v", cfg)
	}
	if len(man.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("layers %v, diff IDs %v", man.Layers, cfg.RootFS.DiffIDs)
	}
	blob(man.Layers[0].Digest)
	l, _ := img.Layers()
	rc, _ := l[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d, time %s", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		names = append(names, h.Name)
	}
	if got := strings.Join(names, " "); got != "etc/ etc/prog/ etc/prog/conf usr/ usr/bin/ usr/bin/prog" {
		t.Errorf("layer entries %q", got)
	}
}

// TestBuildRefusesWhatARuntimeWouldPull: no tag, or latest, would make the
// kubelet reach for a registry; no platform, and containerd would not
// unpack it.
func TestBuildRefusesWhatARuntimeWouldPull(t *testing.T) {
	for _, c := range []struct {
		mut  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Ref = "kpath/test" }, "no tag"},
		{func(s *Spec) { s.Ref = "kpath/test:latest" }, "latest"},
		{func(s *Spec) { s.Platform = v1.Platform{} }, "platform"},
		{func(s *Spec) { s.Entrypoint = nil }, "entrypoint"},
		{func(s *Spec) { s.Files = append(s.Files, s.Files[0]) }, "twice"},
		{func(s *Spec) { s.Files[0].Path = "relative" }, "absolute"},
	} {
		s := testSpec("a")
		c.mut(&s)
		if _, err := Build(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one about %q", s, err, c.want)
		}
	}
}

// TestManifestsNameTheTag: the project's manifests name its images with
// this tree's tag and never pull them, so they run on real nodes that
// imported make image's output.
func TestManifestsNameTheTag(t *testing.T) {
	data, err := os.ReadFile("../../hack/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		i := strings.Index(line, "image: ")
		if i < 0 || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		ref := strings.Trim(strings.Fields(line[i+len("image: "):])[0], `",`)
		if _, tag, _ := strings.Cut(ref, ":"); tag != Tag || !strings.Contains(line, "imagePullPolicy: Never") {
			t.Errorf("hack/demo.yaml: %q, want the tag %s and imagePullPolicy: Never", strings.TrimSpace(line), Tag)
		}
	}
}
