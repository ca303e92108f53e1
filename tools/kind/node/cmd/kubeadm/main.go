// Command kubeadm is the upstream kubeadm, built from the published k8s.io modules (tools/kind/build.sh).
package main

import (
	_ "time/tzdata"

	"k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmutil "k8s.io/kubernetes/cmd/kubeadm/app/util"
)

func main() {
	kubeadmutil.CheckErr(app.Run())
}
