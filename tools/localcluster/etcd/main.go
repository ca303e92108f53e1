// Command etcd is the upstream etcd server of the 3.5 series (Debian's 3.4 is too old for
// current API servers).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
