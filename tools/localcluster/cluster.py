"""Start, check and stop the local Kubernetes control plane (`make cluster-up` / `make cluster-down`).

Everything listens on 127.0.0.1 only and all state lives in `.cluster/` in the checkout:
certificates and keys (`pki/`), etcd's data (`etcd/`), kubeconfigs, logs (`logs/`) and pidfiles
(`run/`). The binaries come from the build cache (`build.sh`, see `env.sh`).

Standard library only, so it runs before anything else is installed; the node agent it starts runs
with the project's virtualenv.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STATE = Path(os.environ.get("LOCALCLUSTER_STATE", ROOT / ".cluster")).resolve()
PKI, RUN, LOGS = STATE / "pki", STATE / "run", STATE / "logs"

HOST = "127.0.0.1"
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 12379, 12380
APISERVER_PORT = 16443
NODE_AGENT_PORT = 16250
NODE_NAME = "local-node"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Every process the cluster starts carries this variable (pods too), so `down` can sweep up strays.
TAG = "FLEET_LOCALCLUSTER"

_t0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _t0:6.1f}s] {msg}", flush=True)


def read_env_sh() -> dict[str, str]:
    """Versions and the cache's bin folder, as env.sh computes them (the one place they are defined)."""
    out = subprocess.run(
        ["bash", "-c", f'source "{HERE}/env.sh" && echo "$CLUSTER_BIN" && echo "$K8S_VERSION"'],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {"bin": out[0], "k8s_version": out[1]}


# --- certificates -------------------------------------------------------------------------------


def openssl(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(["openssl", *args], check=True, input=stdin, capture_output=True)


def issue(name: str, subject: str, usage: str, sans: str = "") -> None:
    """An EC key and a certificate signed by the cluster CA, for a client or a server."""
    key, crt = PKI / f"{name}.key", PKI / f"{name}.crt"
    if crt.exists():
        return
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    csr = PKI / f"{name}.csr"
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext = PKI / f"{name}.ext"
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    lines.append(f"extendedKeyUsage={usage}")
    if sans:
        lines.append(f"subjectAltName={sans}")
    ext.write_text("\n".join(lines) + "\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(PKI / "ca.crt"), "-CAkey", str(PKI / "ca.key"),
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def ensure_pki() -> None:
    PKI.mkdir(parents=True, exist_ok=True)
    os.chmod(PKI, 0o700)
    if not (PKI / "ca.crt").exists():
        say("generating the cluster CA, serving and client certificates, service-account key")
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(PKI / "ca.key"))
        openssl(
            "req", "-x509", "-new", "-key", str(PKI / "ca.key"), "-subj", "/CN=fleet-limiter-local-ca",
            "-days", "3650", "-sha256", "-out", str(PKI / "ca.crt"),
        )  # fmt: skip
    sans = ",".join(
        [
            f"IP:{HOST}",
            "IP:10.96.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    issue("apiserver", "/CN=kube-apiserver", "serverAuth", sans)
    issue("node-agent-serving", f"/CN={NODE_NAME}", "serverAuth", f"IP:{HOST},DNS:localhost,DNS:{NODE_NAME}")
    issue("admin", "/O=system:masters/CN=kubernetes-admin", "clientAuth")
    issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth")
    issue("controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
    issue("scheduler", "/CN=system:kube-scheduler", "clientAuth")
    issue("node-agent", f"/O=system:masters/CN=system:node:{NODE_NAME}", "clientAuth")
    if not (PKI / "sa.key").exists():
        openssl("genrsa", "-out", str(PKI / "sa.key"), "2048")
        openssl("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))
    for f in PKI.iterdir():
        os.chmod(f, 0o600)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, user: str) -> None:
    # JSON is valid YAML; kubectl and the client libraries read it as a kubeconfig.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": f"https://{HOST}:{APISERVER_PORT}",
                    "certificate-authority-data": b64(PKI / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(PKI / f"{user}.crt"),
                    "client-key-data": b64(PKI / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    os.chmod(path, 0o600)


# --- processes ----------------------------------------------------------------------------------


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/pid/stat), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def read_pidfile(path: Path) -> int | None:
    """The pid in a pidfile if that very process is still running."""
    try:
        pid_s, start = path.read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if proc_start_time(pid) == start else None


def write_pidfile(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {proc_start_time(pid)}\n")


def tagged_env() -> dict[str, str]:
    env = dict(os.environ)
    env[TAG] = str(STATE)
    env.pop("KUBECONFIG", None)
    return env


@dataclass
class Component:
    name: str
    argv: Callable[[], list[str]]
    ready: Callable[[float], bool]  # given the start time (epoch seconds)
    ready_timeout: float = 60.0

    @property
    def pidfile(self) -> Path:
        return RUN / f"{self.name}.pid"

    def pid(self) -> int | None:
        return read_pidfile(self.pidfile)

    def start(self) -> None:
        log = LOGS / f"{self.name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=STATE,
                env=tagged_env(),
                start_new_session=True,  # its own process group, so `down` can signal the group
            )
        write_pidfile(self.pidfile, proc.pid)
        started = time.time()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise SystemExit(f"error: {self.name} exited with {proc.returncode}; end of {log}:\n{tail}")
            if self.ready(started):
                return
            time.sleep(0.3)
        raise SystemExit(f"error: {self.name} not ready after {self.ready_timeout:.0f}s; see {log}")


def kill_group(pid: int, grace: float, what: str) -> None:
    """SIGTERM the process group led by pid, SIGKILL it after grace seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    start = proc_start_time(pid)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc_start_time(pid) != start or start is None:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    say(f"stopped {what} (pid {pid})")


def tagged_pids() -> list[int]:
    """Processes carrying this cluster's tag in their environment (strays of any component or pod)."""
    needle = f"{TAG}={STATE}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env:
            found.append(int(entry.name))
    return found


# --- health checks ------------------------------------------------------------------------------


def https_context(user: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    if user:
        ctx.load_cert_chain(str(PKI / f"{user}.crt"), str(PKI / f"{user}.key"))
    return ctx


def get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ssl.SSLError):
        return 0, b""


def api(path: str) -> tuple[int, dict]:
    code, body = get(f"https://{HOST}:{APISERVER_PORT}{path}", https_context("admin"))
    try:
        return code, json.loads(body) if body else {}
    except ValueError:
        return code, {}


def etcd_ready(_since: float = 0.0) -> bool:
    code, body = get(f"http://{HOST}:{ETCD_CLIENT_PORT}/health")
    return code == 200 and b'"true"' in body


def apiserver_ready(_since: float = 0.0) -> bool:
    return get(f"https://{HOST}:{APISERVER_PORT}/readyz", https_context())[0] == 200


def node_ready(since: float = 0.0) -> bool:
    """The node reports Ready and its agent renewed the node's Lease recently (and after `since`, epoch
    seconds): a Ready condition alone may be a stale one left in etcd by an agent that is gone."""
    code, node = api(f"/api/v1/nodes/{NODE_NAME}")
    if code != 200:
        return False
    conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    if conds.get("Ready") != "True":
        return False
    code, lease = api(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE_NAME}")
    renewed = lease.get("spec", {}).get("renewTime") if code == 200 else None
    if not renewed:
        return False
    renewed_at = datetime.strptime(renewed[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return renewed_at >= int(since) and time.time() - renewed_at < 40


def always(_since: float = 0.0) -> bool:
    return True


# --- the components -----------------------------------------------------------------------------


def components(bin_dir: Path, k8s_version: str) -> list[Component]:
    pki = str(PKI)
    venv_python = Path(os.environ.get("LOCALCLUSTER_PYTHON", ROOT / ".venv" / "bin" / "python"))

    def etcd() -> list[str]:
        return [
            f"{bin_dir}/etcd", "--name=local", f"--data-dir={STATE}/etcd",
            f"--listen-client-urls=http://{HOST}:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://{HOST}:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://{HOST}:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://{HOST}:{ETCD_PEER_PORT}",
            f"--initial-cluster=local=http://{HOST}:{ETCD_PEER_PORT}",
            "--listen-metrics-urls=", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ]  # fmt: skip

    def apiserver() -> list[str]:
        return [
            f"{bin_dir}/kube-apiserver",
            f"--etcd-servers=http://{HOST}:{ETCD_CLIENT_PORT}",
            f"--bind-address={HOST}", f"--advertise-address={HOST}", f"--secure-port={APISERVER_PORT}",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The "kubernetes" Service cannot point at a loopback address: no endpoints for it.
            "--endpoint-reconciler-type=none",
            # `kubectl logs` reaches the node agent like a kubelet (node InternalIP 127.0.0.1).
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            f"--kubelet-certificate-authority={pki}/ca.crt",
            "--profiling=false", "--v=1",
        ]  # fmt: skip

    def controller_manager() -> list[str]:
        return [
            f"{bin_dir}/kube-controller-manager",
            f"--kubeconfig={STATE}/controller-manager.kubeconfig",
            "--secure-port=0", "--leader-elect=false", "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki}/sa.key",
            f"--root-ca-file={pki}/ca.crt",
            f"--cluster-signing-cert-file={pki}/ca.crt", f"--cluster-signing-key-file={pki}/ca.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allocate-node-cidrs=false",
            "--profiling=false", "--v=1",
        ]  # fmt: skip

    def scheduler() -> list[str]:
        return [
            f"{bin_dir}/kube-scheduler", f"--kubeconfig={STATE}/scheduler.kubeconfig",
            "--secure-port=0", "--leader-elect=false", "--profiling=false", "--v=1",
        ]  # fmt: skip

    def node_agent() -> list[str]:
        return [
            str(venv_python), str(HERE / "nodeagent" / "main.py"),
            f"--node-name={NODE_NAME}", f"--server=https://{HOST}:{APISERVER_PORT}",
            f"--ca-file={pki}/ca.crt",
            f"--cert-file={pki}/node-agent.crt", f"--key-file={pki}/node-agent.key",
            f"--serving-cert-file={pki}/node-agent-serving.crt",
            f"--serving-key-file={pki}/node-agent-serving.key",
            f"--port={NODE_AGENT_PORT}", f"--state-dir={STATE}", f"--kubelet-version={k8s_version}",
            f"--venv-bin={venv_python.parent}", f"--tools-bin={bin_dir}",
        ]  # fmt: skip

    return [
        Component("etcd", etcd, etcd_ready),
        Component("kube-apiserver", apiserver, apiserver_ready, ready_timeout=120),
        Component("kube-controller-manager", controller_manager, always),
        Component("kube-scheduler", scheduler, always),
        Component("node-agent", node_agent, node_ready),
    ]


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def default_service_account() -> bool:
    return api("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200


def healthy(comps: list[Component]) -> bool:
    return all(c.pid() for c in comps) and apiserver_ready() and node_ready()


def up() -> None:
    env = read_env_sh()
    bin_dir = Path(env["bin"])
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
               if not (bin_dir / b).exists()]  # fmt: skip
    if missing:
        raise SystemExit(
            f"error: {', '.join(missing)} not built in {bin_dir}: run `make cluster-build` first"
        )
    for d in (STATE, RUN, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    comps = components(bin_dir, env["k8s_version"])
    kubeconfig = STATE / "kubeconfig"
    if healthy(comps) and kubeconfig.exists():
        say(f"the local cluster is already up and healthy ({HOST}:{APISERVER_PORT})")
    else:
        ensure_pki()
        write_kubeconfig(kubeconfig, "admin")
        write_kubeconfig(STATE / "controller-manager.kubeconfig", "controller-manager")
        write_kubeconfig(STATE / "scheduler.kubeconfig", "scheduler")
        for c in comps:
            pid = c.pid()
            if pid:
                say(f"{c.name} already running (pid {pid})")
                continue
            t = time.monotonic()
            c.start()
            say(f"{c.name} started (pid {c.pid()}) and ready in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        wait_for("the default service account", default_service_account, 60)
        say(f"controllers working (default service account) in {time.monotonic() - t:.1f}s")
        say(f"the local cluster is up: API server https://{HOST}:{APISERVER_PORT}, node {NODE_NAME} Ready")
    print(f"export KUBECONFIG={kubeconfig}")
    print(f"export PATH={bin_dir}:$PATH   # kubectl {env['k8s_version']} and helm of the local cluster")


def down() -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    order = ["node-agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
    for name in order:
        pidfile = RUN / f"{name}.pid"
        pid = read_pidfile(pidfile)
        if pid:
            # the node agent stops its pods on SIGTERM; give it time to do so
            kill_group(pid, 15.0 if name == "node-agent" else 10.0, name)
        pidfile.unlink(missing_ok=True)
    # Pod processes the agent could not stop (it crashed, or a pod left its process group).
    for pidfile in sorted((RUN / "pods").glob("*.pid")) if (RUN / "pods").exists() else []:
        pid = read_pidfile(pidfile)
        if pid:
            kill_group(pid, 2.0, f"pod process {pidfile.stem}")
        pidfile.unlink(missing_ok=True)
    for pid in tagged_pids():
        try:
            os.kill(pid, signal.SIGKILL)
            say(f"killed stray process {pid}")
        except ProcessLookupError:
            pass
    say("the local cluster is down")


def status() -> int:
    env = read_env_sh()
    comps = components(Path(env["bin"]), env["k8s_version"])
    for c in comps:
        pid = c.pid()
        print(f"{c.name:26} {'running, pid ' + str(pid) if pid else 'stopped'}")
    ok = healthy(comps)
    print(f"{'healthy':26} {'yes' if ok else 'no'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "purge"])
    cmd = parser.parse_args().command
    if cmd == "up":
        up()
    elif cmd == "down":
        down()
    elif cmd == "purge":
        down()
        shutil.rmtree(STATE, ignore_errors=True)
        say(f"removed {STATE}")
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
