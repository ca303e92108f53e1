#!/bin/sh
# fleet-cni: the pod network of the fleet-limiter kind cluster, one pod per node (hostNetwork).
# Writes the node's CNI config (Debian's ptp + host-local plugins on the node's spec.podCIDR: every
# pod's traffic is routed through the node, so kube-proxy's rules see both directions), then keeps a
# route to every other node's pod CIDR via that node's InternalIP. Pods reach other pods, Services
# and nodes; nothing is masqueraded and nothing leaves the cluster's Docker network.
set -eu
node=${NODE_NAME:?NODE_NAME is not set}
conf=/etc/cni/net.d/10-fleet-cni.conflist
while :; do
  cidr=$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
  if [ -n "$cidr" ]; then
    want=$(printf '{"cniVersion": "0.4.0", "name": "fleet-cni", "plugins": [{"type": "ptp", "mtu": 1500, "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "%s"}]], "routes": [{"dst": "0.0.0.0/0"}]}}, {"type": "portmap", "capabilities": {"portMappings": true}}]}' "$cidr")
    if [ "$(cat "$conf" 2>/dev/null || true)" != "$want" ]; then
      printf '%s' "$want" >"$conf.tmp" && mv "$conf.tmp" "$conf"
      echo "fleet-cni: $conf for $cidr"
    fi
  fi
  kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null |
  while read -r name podcidr ip; do
    [ "$name" != "$node" ] && [ -n "$podcidr" ] && [ -n "$ip" ] || continue
    if ! ip route show "$podcidr" | grep -q "via $ip "; then
      ip route replace "$podcidr" via "$ip" && echo "fleet-cni: route $podcidr via $ip ($name)"
    fi
  done
  sleep 5
done
