// Package image builds kpath's container images without Docker or a
// registry: one layer of files, a config with its platform and entrypoint,
// written as an OCI image layout in a tarball that containerd (`ctr images
// import`), Docker and podman load. Everything that would vary between
// builds of the same files (timestamps, file order, owners, compression
// headers) is fixed, so the same inputs give the same digest.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// epoch is the time of every timestamp in an image (SOURCE_DATE_EPOCH 0):
// a build's own time would change its digest.
var epoch = time.Unix(0, 0).UTC()

// File is a file of an image: a regular file, or a symbolic link when
// Link is set, or a directory when Dir is.
type File struct {
	Path string // absolute path in the image
	Mode int64  // permission bits (1777 for a directory like /tmp)
	Data []byte
	Link string // the target of a symbolic link
	Dir  bool
}

// Spec is an image to build.
type Spec struct {
	// Ref names the image: a repository and a tag (never "latest", which
	// makes the kubelet pull), e.g. "kpath/kpath:v0.1.0".
	Ref        string
	Platform   v1.Platform // OS and Architecture at least
	Entrypoint []string
	Cmd        []string
	Env        []string
	Labels     map[string]string
	Files      []File
}

// Name is a reference in the normalized form containerd and the kubelet
// use for it ("docker.io/kpath/kpath:v0.1.0").
func Name(ref string) (string, error) {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	t, ok := n.(reference.NamedTagged)
	if !ok {
		return "", fmt.Errorf("image reference %q has no tag: tag it, so the kubelet finds it imported instead of pulling", ref)
	}
	if t.Tag() == "latest" {
		return "", fmt.Errorf("image reference %q: the tag latest makes the kubelet pull it (imagePullPolicy Always): use a version", ref)
	}
	return t.String(), nil
}

// Build makes the image of s.
func Build(s Spec) (v1.Image, error) {
	if _, err := Name(s.Ref); err != nil {
		return nil, err
	}
	if s.Platform.OS == "" || s.Platform.Architecture == "" {
		return nil, fmt.Errorf("image %s: platform %q: set OS and architecture (containerd does not unpack an image without them)", s.Ref, s.Platform.String())
	}
	if len(s.Entrypoint) == 0 && len(s.Cmd) == 0 {
		return nil, fmt.Errorf("image %s: no entrypoint and no command", s.Ref)
	}
	layer, err := layerOf(s.Files)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: s.Platform.Architecture, OS: s.Platform.OS, Variant: s.Platform.Variant,
		Created: v1.Time{Time: epoch},
		Config: v1.Config{
			Entrypoint: s.Entrypoint, Cmd: s.Cmd, Env: s.Env, Labels: s.Labels, WorkingDir: "/",
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "kpath image build"}})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	return img, nil
}

// layerOf is a gzipped tar of files and their parent directories, in path
// order, owned by root, every time the epoch.
func layerOf(files []File) (v1.Layer, error) {
	files = slices.Clone(files)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	dirs := map[string]bool{}
	for i, f := range files {
		p := path.Clean(f.Path)
		if !path.IsAbs(p) || p == "/" {
			return nil, fmt.Errorf("file path %q: want an absolute path of a file", f.Path)
		}
		if i > 0 && path.Clean(files[i-1].Path) == p {
			return nil, fmt.Errorf("file %s given twice", p)
		}
		var parents []string
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			parents = append(parents, d)
		}
		slices.Reverse(parents)
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: p[1:], Mode: f.Mode, Size: int64(len(f.Data)), ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case f.Dir && (f.Link != "" || len(f.Data) > 0), f.Link != "" && len(f.Data) > 0:
			return nil, fmt.Errorf("file %s: a file, a link or a directory, not two", p)
		case f.Dir:
			if dirs[p] {
				return nil, fmt.Errorf("directory %s after a file in it: list it first", p)
			}
			dirs[p] = true
			h.Typeflag, h.Name, h.Size = tar.TypeDir, p[1:]+"/", 0
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Size, h.Mode = tar.TypeSymlink, f.Link, 0, 0o777
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	// tarball compresses with compress/gzip, whose output (no name, no
	// time in its header) depends only on the input and the level.
	tarBytes := raw.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tarBytes)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestCompression), tarball.WithCompressedCaching)
}
