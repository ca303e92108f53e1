// Command fleet-runc is an OCI runtime that drops CAP_SYS_RESOURCE and then runs runc.
//
// On a host whose capability bounding set lacks CAP_SYS_RESOURCE (some sandboxed VMs), runc
// cannot give that capability to a container and a privileged container fails with "unable to
// apply caps: operation not permitted". Docker (and containerd inside a kind node) asks for every
// capability in a privileged container, so this wrapper removes CAP_SYS_RESOURCE from what is
// requested: from the bundle's config.json on `create` and `run`, from the --process file and
// --cap flags on `exec`. Everything else is passed to runc untouched. It is installed only where
// the capability is missing (tools/kind/docker.sh checks the bounding set).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

const dropped = "CAP_SYS_RESOURCE"

// runc's global flags that take a value, so the subcommand is found after them.
var globalWithValue = map[string]bool{
	"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true,
}

func main() {
	args := os.Args[1:]
	sub := subcommand(args)
	var err error
	switch sub.name {
	case "create", "run":
		bundle := flagValue(args[sub.index+1:], "--bundle", "-b")
		if bundle == "" {
			bundle = "."
		}
		err = editJSON(filepath.Join(bundle, "config.json"), func(spec map[string]any) {
			if process, ok := spec["process"].(map[string]any); ok {
				stripCaps(process)
			}
		})
	case "exec":
		if process := flagValue(args[sub.index+1:], "--process", "-p"); process != "" {
			err = editJSON(process, stripCaps)
		}
		args = dropCapFlags(args, sub.index+1)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet-runc: %v\n", err)
		os.Exit(1)
	}
	runc, err := realRunc()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet-runc: %v\n", err)
		os.Exit(1)
	}
	if err := syscall.Exec(runc, append([]string{"runc"}, args...), os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "fleet-runc: exec %s: %v\n", runc, err)
		os.Exit(1)
	}
}

type position struct {
	name  string
	index int
}

func subcommand(args []string) position {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if globalWithValue[a] {
			i++
			continue
		}
		if !strings.HasPrefix(a, "-") {
			return position{a, i}
		}
	}
	return position{"", len(args)}
}

// flagValue returns the value of the first of names in args ("--name v", "--name=v" or "-n v").
func flagValue(args []string, names ...string) string {
	for i, a := range args {
		for _, n := range names {
			if a == n && i+1 < len(args) {
				return args[i+1]
			}
			if strings.HasPrefix(a, n+"=") {
				return strings.TrimPrefix(a, n+"=")
			}
		}
	}
	return ""
}

// dropCapFlags removes "--cap CAP_SYS_RESOURCE" (and -c, --cap=) from the exec arguments after from.
func dropCapFlags(args []string, from int) []string {
	out := append([]string{}, args[:from]...)
	for i := from; i < len(args); i++ {
		a := args[i]
		if (a == "--cap" || a == "-c") && i+1 < len(args) && args[i+1] == dropped {
			i++
			continue
		}
		if a == "--cap="+dropped {
			continue
		}
		out = append(out, a)
	}
	return out
}

// stripCaps removes the capability from every set of an OCI process object.
func stripCaps(process map[string]any) {
	caps, ok := process["capabilities"].(map[string]any)
	if !ok {
		return
	}
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(list))
		for _, c := range list {
			if c != dropped {
				kept = append(kept, c)
			}
		}
		caps[set] = kept
	}
}

// editJSON rewrites a JSON object file in place; numbers keep their exact text (UseNumber).
func editJSON(path string, edit func(map[string]any)) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	edit(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	tmp := path + ".fleet-runc"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// realRunc is $FLEET_RUNC, else the first runc on PATH (or in /usr/sbin, /usr/bin).
func realRunc() (string, error) {
	if p := os.Getenv("FLEET_RUNC"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("runc"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("runc not found (set FLEET_RUNC)")
}
