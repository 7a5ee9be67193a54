"""A throwaway single-node Slurm cluster for the tests: Debian's munge, slurmctld and slurmd.

Partitions ``cpu`` (default) and ``gpu``, two fake GPUs as GRES (``/dev/null`` and ``/dev/zero``),
no accounting database. The node announces 8 CPUs and 64 GB whatever the machine has
(``SlurmdParameters=config_overrides``), so jobs sized like the cluster profile's real ones start.
The daemons run in the foreground as children of the test process, which stops them by pid.
Packages: ``.ci/install-slurm.sh``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CONF_DIR = Path("/etc/slurm")  # jobs' inner srun ignores SLURM_CONF, so the config must live here
DAEMONS = ("munged", "slurmctld", "slurmd")
NODE_CPUS, NODE_MEM_MB = 8, 65536

SLURM_CONF = """\
ClusterName=testcluster
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmdSpoolDir={state}/spool
StateSaveLocation={state}/state
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue/scontrol for an hour: the profile's status command is squeue,
# and the tests read every job's partition and GRES after the run.
MinJobAge=3600
GresTypes=gpu
SlurmdParameters=config_overrides
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} Default=NO MaxTime=INFINITE State=UP
"""

# Slurm 22.05 ignores a GRES without a device file; any two files stand in for two GPUs.
GRES_CONF = "NodeName={host} Name=gpu File=/dev/null\nNodeName={host} Name=gpu File=/dev/zero\n"


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [name for name in DAEMONS if not _find(name)]
    if missing:
        return f"Slurm packages missing ({', '.join(missing)}); run .ci/install-slurm.sh as root"
    if os.geteuid() != 0:
        return "starting Slurm daemons needs root"
    if (CONF_DIR / "slurm.conf").exists():
        return f"{CONF_DIR / 'slurm.conf'} exists: a Slurm is configured here already, not touching it"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


def _find(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@dataclass
class SlurmCluster:
    """A running cluster: its node name, state directory and daemon processes."""

    host: str
    state: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def log(self, daemon: str) -> str:
        path = self.state / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still knows (finished ones too, for MinJobAge): id -> fields."""
        out = subprocess.run(
            ["scontrol", "--oneliner", "show", "job"], capture_output=True, text=True, check=True
        ).stdout
        jobs = {}
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue  # "No jobs in the system"
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            jobs[fields["JobId"]] = fields
        return jobs


def start() -> SlurmCluster:
    """Write /etc/slurm/{slurm,gres}.conf, start munged, slurmctld and slurmd, wait for the node."""
    host = socket.gethostname().split(".")[0]
    state = Path(tempfile.mkdtemp(prefix="slurm-test-"))
    for sub in ("spool", "state", "log"):
        (state / sub).mkdir()
    CONF_DIR.mkdir(exist_ok=True)
    (CONF_DIR / "slurm.conf").write_text(
        SLURM_CONF.format(host=host, state=state, cpus=NODE_CPUS, mem=NODE_MEM_MB)
    )
    (CONF_DIR / "gres.conf").write_text(GRES_CONF.format(host=host))
    cluster = SlurmCluster(host, state)
    try:
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            os.makedirs(folder, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        # Foreground daemons, children of this process: a PID 1 that reaps nothing would leave
        # daemonised ones as zombies that still answer kill -0.
        cluster.procs.append(_spawn([_find("munged"), "-F"], state / "log" / "munged.out", user="munge"))
        _wait(lambda: Path("/run/munge/munge.socket.2").exists(), 10, "munged", cluster)
        cluster.procs.append(_spawn([_find("slurmctld"), "-D", "-c"], state / "log" / "slurmctld.out"))
        _wait(lambda: _ok(["scontrol", "ping"]), 20, "slurmctld", cluster)
        cluster.procs.append(_spawn([_find("slurmd"), "-D"], state / "log" / "slurmd.out"))
        _wait(lambda: _node_state() in ("idle", "mixed", "allocated"), 30, "slurmd", cluster)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: SlurmCluster) -> None:
    """Cancel every job, stop the daemons (newest first), remove the config and the state."""
    subprocess.run(["scancel", "--user=root"], capture_output=True)
    for proc in reversed(cluster.procs):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for name in ("slurm.conf", "gres.conf"):
        (CONF_DIR / name).unlink(missing_ok=True)
    shutil.rmtree(cluster.state, ignore_errors=True)


def _spawn(cmd: list, out: Path, user: str | None = None) -> subprocess.Popen:
    with open(out, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, user=user)


def _ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _node_state() -> str:
    out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True)
    return out.stdout.split()[0].rstrip("*~#") if out.returncode == 0 and out.stdout.split() else ""


def _wait(ready, seconds: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if any(proc.poll() is not None for proc in cluster.procs):
            break
        time.sleep(0.1)
    logs = "\n".join(f"--- {d}\n{cluster.log(d)[-1500:]}" for d in ("slurmctld", "slurmd"))
    raise RuntimeError(f"{what} did not come up within {seconds} s\n{logs}")
