"""A throw-away one-node SLURM cluster on localhost, for tests of the cluster profile.

Debian's packages (`slurm-wlm`, `munge`) are enough: munged, slurmctld and slurmd run in the
foreground as children of the test, with every state file, socket and log in a private folder,
free TCP ports, and a MUNGE socket of their own, so they never touch a system-wide installation
or another test's cluster. No cgroups, systemd or accounting database: processes are tracked by
`proctrack/linuxproc`, and job states come from `squeue`, which is why `MinJobAge` keeps finished
jobs visible for minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clipbert.smk import JOB_RESOURCES

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun", "scancel")
SBIN = ("/usr/sbin", "/sbin", "/usr/bin")
# squeue forgets a finished job MinJobAge seconds after it ends; the executor plugin must see the
# final state before then, and it checks at most every few minutes. The test reads every job's
# final state at the end of a run of up to TIME_LIMIT (tests/test_slurm.py), so it keeps them
# longer than that.
MIN_JOB_AGE = 900
PARTITION = "debug"
NODE = "clipnode"


def find_binary(name: str) -> str | None:
    """Daemons live in /usr/sbin, which a non-login PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if find_binary(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo: no MemTotal line")


@dataclass
class Cluster:
    """A running cluster. `env` reaches it: SLURM_CONF, and `bin` first on PATH.

    `bin` holds SLURM's commands wrapped to this cluster's slurm.conf, because the executor's
    jobstep plugin strips every SLURM_* variable (SLURM_CONF too) before its nested `srun`, which
    then finds no configuration on a machine without /etc/slurm/slurm.conf.
    """

    root: Path
    cpus: int
    memory_mb: int
    env: dict[str, str]
    bin: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [find_binary(args[0]) or args[0], *args[1:]],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def logs(self) -> str:
        """The daemons' logs, for a failure message."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-3000:]}")
        return "\n".join(parts)


def _write_config(root: Path, cpus: int, memory_mb: int, munge_socket: Path) -> Path:
    conf = root / "slurm.conf"
    spool = root / "spool"
    (spool / NODE).mkdir(parents=True)
    lines = [
        "ClusterName=cliptest",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={spool}/%n",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        f"MinJobAge={MIN_JOB_AGE}",
        "SlurmdTimeout=120",
        # Only what exists: the CPUs, less memory than the machine has, no GPUs.
        f"NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
        f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _write_wrappers(bin_dir: Path, conf: Path) -> None:
    bin_dir.mkdir()
    for name in CLIENTS:
        wrapper = bin_dir / name
        wrapper.write_text(
            f'#!/bin/sh\nSLURM_CONF={conf} exec {find_binary(name)} "$@"\n'
        )
        wrapper.chmod(0o755)


def _wait(predicate, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode})\n{cluster.logs()}")
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}\n{cluster.logs()}")


def _stop(cluster: Cluster) -> None:
    """Cancel what is left, then end each daemon by its PID, newest first."""
    if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
        try:
            cluster.run("scancel", "--partition", PARTITION, timeout=15)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queue = cluster.run("squeue", "--noheader", "--states=RUNNING,PENDING,COMPLETING")
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        except subprocess.TimeoutExpired:
            pass
    for name in reversed(list(cluster.procs)):
        proc = cluster.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextmanager
def local_cluster(memory_mb: int | None = None) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd (as root); stop them by PID on exit.

    The folder is made with mkdtemp rather than pytest's tmp_path because munged insists that
    every folder above its socket be world-searchable.
    """
    if os.geteuid() != 0:
        raise RuntimeError("a local SLURM cluster needs root (slurmd runs jobs as their user)")
    missing = missing_binaries()
    if missing:
        raise RuntimeError(f"SLURM/MUNGE programs not found: {', '.join(missing)}")
    root = Path(tempfile.mkdtemp(prefix="clipslurm-"))
    root.chmod(0o755)
    for sub in ("state", "log", "run", "munge"):
        (root / sub).mkdir()
    (root / "run").chmod(0o755)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "run" / "munge.sock"
    cpus = os.cpu_count() or 1
    memory = memory_mb or max(1000, _memory_mb() // 2)
    conf = _write_config(root, cpus, memory, munge_socket)
    bin_dir = root / "bin"
    _write_wrappers(bin_dir, conf)
    env = dict(
        os.environ, SLURM_CONF=str(conf),
        PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
    )
    cluster = Cluster(root=root, cpus=cpus, memory_mb=memory, env=env, bin=bin_dir)
    log = root / "log"
    try:
        with open(log / "munged.out", "w") as out:
            cluster.procs["munged"] = subprocess.Popen(
                [find_binary("munged"), "--foreground", f"--socket={munge_socket}",
                 f"--key-file={key}", f"--pid-file={root / 'run' / 'munged.pid'}",
                 f"--seed-file={root / 'munge' / 'seed'}", f"--log-file={log / 'munged.log'}"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        _wait(munge_socket.exists, 20, "the MUNGE socket", cluster)
        for name, args in (
            ("slurmctld", ["-D", "-f", str(conf)]),
            ("slurmd", ["-D", "-N", NODE, "-f", str(conf)]),
        ):
            with open(log / f"{name}.out", "w") as out:
                cluster.procs[name] = subprocess.Popen(
                    [find_binary(name), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                )

        def node_idle() -> bool:
            state = cluster.run("sinfo", "--noheader", "--Node", "--format=%T")
            return state.returncode == 0 and state.stdout.strip() == "idle"

        _wait(node_idle, 60, f"node {NODE} to be idle", cluster)
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(root, ignore_errors=True)


def fitted_profile(cluster: Cluster, shipped: Path, dest: Path, *, scenes_per_group: int,
                   first_status_check: int) -> Path:
    """The profile folder `shipped` (profiles/slurm) fitted to this cluster's node: its CPUs and
    memory, no GPUs, squeue for status, `scenes_per_group` scenes a group job. Everything else
    (rule groups, the executor, the scheduling settings; the rules' runtimes) is as shipped."""
    profile = yaml.safe_load((shipped / "config.yaml").read_text())
    per_job_mb = cluster.memory_mb // cluster.cpus
    profile["cores"] = cluster.cpus
    profile["group-components"]["scenes"] = scenes_per_group
    profile["default-resources"]["slurm_partition"] = PARTITION
    # The rules' own memory (the demo's scale), lowered to what the node has where it is less.
    for rule, (mem_mb, _) in JOB_RESOURCES["demo"].items():
        if mem_mb > per_job_mb and rule in profile["set-resources"]:
            profile["set-resources"][rule]["mem_mb"] = per_job_mb
    for rule, res in profile["set-resources"].items():
        if "gpu" in res:
            assert res["gpu"] >= 1, f"profile: {rule} should ask for a GPU"
            res["gpu"] = 0  # the test node has none
    for rule in profile["set-threads"]:
        profile["set-threads"][rule] = min(profile["set-threads"][rule], cluster.cpus)
    profile.update({
        "latency-wait": 5,
        "retries": 0,
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": first_status_check,
        "slurm-no-account": True,
        "slurm-keep-successful-logs": True,
    })
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest
