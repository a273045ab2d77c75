package image

import (
	"bytes"
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// HostPrograms are programs of this machine as files of an image: each
// program at the image path it is given under (the content of the file
// its host path resolves to), with the shared libraries the dynamic loader
// maps for it (as ldd lists them, at the paths where the loader finds them)
// and the loader itself at the path the program names. A library several
// programs need is listed once. A static program brings nothing more.
func HostPrograms(programs map[string]string) ([]File, error) {
	files := map[string]File{}
	add := func(imagePath, hostPath string, mode int64) error {
		if _, ok := files[imagePath]; ok {
			return nil
		}
		data, err := os.ReadFile(hostPath)
		if err != nil {
			return err
		}
		files[imagePath] = File{Path: imagePath, Mode: mode, Data: data}
		return nil
	}
	for _, imagePath := range slices.Sorted(maps.Keys(programs)) {
		hostPath := programs[imagePath]
		if err := add(imagePath, hostPath, 0o755); err != nil {
			return nil, fmt.Errorf("program %s: %w (is its package installed? hack/install-deps.sh)", hostPath, err)
		}
		libs, interp, err := sharedLibraries(hostPath)
		if err != nil {
			return nil, fmt.Errorf("program %s: %w", hostPath, err)
		}
		if interp != "" {
			if err := add(interp, interp, 0o755); err != nil {
				return nil, fmt.Errorf("program %s: its loader: %w", hostPath, err)
			}
		}
		for _, lib := range libs {
			if err := add(lib, lib, 0o644); err != nil {
				return nil, fmt.Errorf("program %s: library %w", hostPath, err)
			}
		}
	}
	out := make([]File, 0, len(files))
	for _, p := range slices.Sorted(maps.Keys(files)) {
		out = append(out, files[p])
	}
	return out, nil
}

// sharedLibraries lists the libraries the loader maps for a dynamically
// linked program (ldd's "name => path" lines; the vDSO has no file) and the
// loader the program names (its PT_INTERP); none for a static one.
func sharedLibraries(program string) (libs []string, interp string, err error) {
	f, err := elf.Open(program)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, "", fmt.Errorf("reading its loader's name: %w", err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if interp == "" {
		return nil, "", nil
	}
	out, err := exec.Command("ldd", program).Output()
	if err != nil {
		return nil, "", fmt.Errorf("ldd: %w", err)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		_, after, ok := strings.Cut(line, "=> ")
		if !ok {
			continue
		}
		lib, _, _ := strings.Cut(after, " (")
		if lib == "not found" {
			return nil, "", fmt.Errorf("ldd: %s", strings.TrimSpace(line))
		}
		if path.IsAbs(lib) {
			libs = append(libs, filepath.Clean(lib))
		}
	}
	return libs, interp, nil
}

// BusyboxApplets is a static busybox at /bin/busybox with a link for each
// of its applets where busybox --list-full places it (/bin/sh,
// /usr/bin/wget, ...), except at the paths in skip, which an image holds
// another program at.
func BusyboxApplets(busybox string, skip map[string]bool) ([]File, error) {
	data, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox: %w (Debian's busybox-static: hack/install-deps.sh)", err)
	}
	if libs, interp, err := sharedLibraries(busybox); err != nil || interp != "" || len(libs) > 0 {
		return nil, fmt.Errorf("busybox %s is not static (err %v): install busybox-static", busybox, err)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list-full: %w", err)
	}
	files := []File{{Path: "/bin/busybox", Mode: 0o755, Data: data}}
	for applet := range strings.FieldsSeq(string(out)) {
		p := "/" + strings.TrimPrefix(applet, "/")
		if p == "/bin/busybox" || skip[p] {
			continue
		}
		files = append(files, File{Path: p, Link: "/bin/busybox"})
	}
	return files, nil
}
