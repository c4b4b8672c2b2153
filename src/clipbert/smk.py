"""What the Snakefile and the workflow scripts need from the package, so that a failure inside
Snakemake reads as the same one line `error: <file>: <where>: <what>` as standalone.

Without it a rule's script ends in a 20-line Python traceback around the one useful line, and a
misspelt config key in a 25-line schema dump. Torch-free: the Snakefile imports this.
"""

from __future__ import annotations

import contextlib
import difflib
import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import yaml
from jsonschema import Draft202012Validator, validators

from clipbert.errors import ClipbertError, machine_error
from clipbert.signals import Terminated, sigterm_unwinds

# A rate limit at or above this many jobs per timespan never binds in this workflow (1,513 scenes
# make ~4,500 jobs), so the scheduler needs no timer to lift it.
NEVER_BINDING_JOBS = 10_000


def stop_scheduler_timers() -> None:
    """Cancel the re-evaluation timers that Snakemake's scheduler arms, one per job-selection
    round, each as long as the rate limiter's timespan (`max-jobs-per-timespan`). They are not
    daemon threads, so without this the process waits for the last of them at exit; and each one
    that fires runs another round, which arms another: with many ready jobs, rounds (and
    Snakemake's CPU per job) grow with the jobs already finished (issue 23). Upstream: the rate
    limiter's loop, snakemake/snakemake PR #3744 (open as of Snakemake 9.25); relies on
    `JobScheduler._schedule_reevalutation` arming a `threading.Timer` (INTERNALS)."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()


def reap_scheduler_timers(max_jobs: int, period_s: float = 1.0) -> None:
    """For the Snakefile's onstart: when the rate limit (`max_jobs` per timespan) never binds,
    cancel the scheduler's pending timers every `period_s` (shorter than the profiles' one-minute
    timespan, so none fires) from a daemon thread. A limit that can bind keeps its timers: they
    are what starts the next jobs once it has passed."""
    if max_jobs < NEVER_BINDING_JOBS:
        return

    def reap() -> None:
        while True:
            time.sleep(period_s)
            stop_scheduler_timers()

    threading.Thread(target=reap, name="clipbert-timer-reaper", daemon=True).start()


def fail(message: str) -> NoReturn:
    """Stop with `error: MESSAGE` on stderr and exit status 1, no traceback. For the Snakefile and
    its includes, where a raised exception is shown with Snakemake's traceback around it."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def local_gpus() -> int:
    """NVIDIA GPUs on this machine as the driver lists them, without importing torch (the
    Snakefile asks at parse time); CUDA_VISIBLE_DEVICES="" hides them as it does from torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    return len(list(Path("/proc/driver/nvidia/gpus").glob("*")))


# ---- a run after Snakemake itself was killed ---------------------------------------------------
# Snakemake locks its working directory while it runs and unlocks it when it ends; killed with
# SIGKILL (the OOM killer, a lost machine) it leaves the lock, and every later run stops asking
# for `--unlock`. The workflow records which Snakemake holds the lock, so that the next run can
# tell a dead holder's lock from a live one's and remove only the former. Upstream has no issue
# for it (Snakemake documents `--unlock` as the remedy); relies on the lock files lying in
# `.snakemake/locks/*.lock` (INTERNALS).

LOCK_OWNER = Path(".snakemake/clipbert_lock_owner.json")
LOCKS = Path(".snakemake/locks")


def _start_time(pid: int) -> str | None:
    """When process `pid` started (ticks since boot; None when there is no such process), so
    that a recycled pid is not taken for the process that held it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_lock_owner() -> None:
    """Called once the lock is taken (the workflow's `onstart`): this process holds it."""
    LOCK_OWNER.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))


def drop_lock_owner() -> None:
    """Called when the run ends (`onsuccess`, `onerror`): Snakemake removes its lock."""
    LOCK_OWNER.unlink(missing_ok=True)


def forget_missing_outputs(workflow: Any) -> None:
    """Called when a run fails (`onerror`). Snakemake 9 records a failed job's metadata as if
    the job had made its outputs (today's inputs, params and code), then deletes the outputs:
    the next run takes a job whose outputs are missing but whose successors' outputs exist
    (`train_blind` stopped, `infer_blind` still holding the old model's scores) as up to date,
    and never reruns it, leaving a stale result. Without the record the job's inputs count as
    new, so it runs again. Upstream: snakemake/snakemake issue #3808 (open as of Snakemake 9.25);
    relies on `workflow.persistence.metadata/cleanup_metadata` and `workflow.dag.jobs`
    (INTERNALS)."""
    persistence = workflow.persistence
    for job in workflow.dag.jobs:
        for f in job.output:
            if not os.path.exists(f) and persistence.metadata(f) is not None:
                persistence.cleanup_metadata(f)


def _orphaned_jobs() -> list[int]:
    """Processes that still run a Snakemake job script in this working directory."""
    here, found = str(Path.cwd()), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (os.readlink(proc / "cwd") == here
                    and b".snakemake/scripts/" in (proc / "cmdline").read_bytes()):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def clear_dead_lock(dry_run: bool) -> None:
    """Remove the lock a killed Snakemake left in this working directory (its holder, as
    recorded, is gone), with a note; stop with one line while that Snakemake's jobs still run.
    A lock whose holder is alive, or that this workflow did not record, is Snakemake's to
    report."""
    locks = list(LOCKS.glob("*.lock"))
    try:
        owner = json.loads(LOCK_OWNER.read_text())
    except (OSError, ValueError):
        return
    if not locks or owner.get("start") is None or _start_time(owner["pid"]) == owner["start"]:
        return
    jobs = _orphaned_jobs()
    if jobs and not dry_run:
        fail(f"{LOCKS}: Snakemake (pid {owner['pid']}) was killed, but its jobs still run "
             f"(pid {', '.join(map(str, jobs))}); wait for them to end, or stop them, and run "
             "again")
    if jobs:
        return
    for lock in locks:
        lock.unlink(missing_ok=True)
    LOCK_OWNER.unlink(missing_ok=True)
    print(f"note: removed the lock of a Snakemake that was killed (pid {owner['pid']})",
          file=sys.stderr, flush=True)


# ---- the Snakemake internals these workarounds rely on -----------------------------------------
# Snakemake and its SLURM plugin are pinned by envs/requirements.lock; a refreshed lock that
# brings a release without one of these fails tests/test_smk_internals.py naming it.


def _source(obj: Any) -> str:
    import inspect

    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _internals() -> list[tuple[str, Any]]:
    """(what, check) for each internal: a check returns True while it is there."""
    import dataclasses

    import snakemake.api  # noqa: F401 - first, as Snakemake's CLI: its modules import in a cycle
    from snakemake import dag, io, workflow
    from snakemake.persistence import PersistenceBase
    from snakemake.persistence import file as persistence_file
    from snakemake.scheduling import job_scheduler
    from snakemake.settings import types

    scheduler = getattr(job_scheduler, "JobScheduler", None)
    wf = workflow.Workflow
    fields = {f.name for f in dataclasses.fields(types.SchedulingSettings)}
    return [
        ("JobScheduler._schedule_reevalutation arming a threading.Timer "
         "(stop_scheduler_timers, PR #3744)",
         lambda: "threading.Timer(" in _source(getattr(scheduler, "_schedule_reevalutation",
                                                       None))),
        ("SchedulingSettings.max_jobs_per_timespan.max_jobs (reap_scheduler_timers)",
         lambda: "max_jobs_per_timespan" in fields
         and "self.max_jobs =" in _source(types.MaxJobsPerTimespan)),
        ("PersistenceBase.metadata and .cleanup_metadata (forget_missing_outputs, issue #3808)",
         lambda: callable(getattr(PersistenceBase, "metadata", None))
         and callable(getattr(PersistenceBase, "cleanup_metadata", None))),
        ("Workflow.persistence, .dag and DAG.jobs (forget_missing_outputs)",
         lambda: all(isinstance(getattr(wf, a, None), property) for a in ("persistence", "dag"))
         and isinstance(getattr(dag.DAG, "jobs", None), property)),
        (f"lock files {LOCKS}/*.lock (clear_dead_lock)",
         lambda: '"locks"' in _source(persistence_file.FilePersistence.__init__)
         and ".lock\"" in _source(persistence_file.FilePersistence)),
        ("Workflow.is_main_process, .local_exec, .dryrun (the Snakefile's clear_dead_lock)",
         lambda: all(isinstance(getattr(wf, a, None), property)
                     for a in ("is_main_process", "local_exec", "dryrun"))),
        ("Workflow.basedir, .config_settings, .configfiles (check_config)",
         lambda: isinstance(getattr(wf, "basedir", None), property)
         and "config_settings" in {f.name for f in dataclasses.fields(wf)}
         and "self.configfiles =" in _source(wf)
         and {"configfiles", "config"} <= {f.name for f in dataclasses.fields(
             types.ConfigSettings)}),
        ("the flag 'sourcecache_entry' of a configfile: in the source cache (check_config)",
         lambda: hasattr(io, "sourcecache_entry") and callable(io.is_flagged)),
    ]


def _slurm_scontrol_at_import() -> tuple[str, Any]:
    """./run's SLURM_CONF=/dev/null answers the SLURM plugin's `scontrol show config`, run when
    the plugin is imported (no upstream issue filed): when that call is gone, so may the
    workaround be."""
    def check() -> bool:  # read, not imported: the import itself runs scontrol
        from importlib.util import find_spec

        spec = find_spec("snakemake_executor_plugin_slurm")
        folder = Path(spec.origin).parent
        return ("scontrol show config" in (folder / "job_status_query.py").read_text()
                and "_get_status_command_help()," in (folder / "__init__.py").read_text())

    return ("the SLURM plugin's `scontrol show config` at import (./run's SLURM_CONF, no "
            "upstream issue)", check)


def internals_gone() -> str | None:
    """One line naming the Snakemake (and SLURM plugin) version and every internal this module
    and ./run rely on that is gone; None when all are there."""
    from importlib.metadata import version

    try:
        checks = [*_internals(), _slurm_scontrol_at_import()]
    except (ImportError, AttributeError, TypeError) as e:
        return f"Snakemake {version('snakemake')}: gone: {e}"
    gone = []
    for what, check in checks:
        try:
            ok = check()
        except (AttributeError, ImportError, TypeError, KeyError, OSError):
            ok = False
        if not ok:
            gone.append(what)
    if not gone:
        return None
    return (f"Snakemake {version('snakemake')} (SLURM plugin "
            f"{version('snakemake-executor-plugin-slurm')}): gone: {'; '.join(gone)}")


# ---- workflow scripts -------------------------------------------------------------------------


@contextlib.contextmanager
def workflow_step(snakemake: Any) -> Iterator[None]:
    """The body of a rule's script, as the rule's job: `with workflow_step(snakemake): ...`.

    Output (of Python, C libraries and child processes) goes to the rule's log; SIGTERM unwinds
    like Ctrl-C, so temporaries are removed. A ClipbertError (bad input) becomes the one line
    `error: ...` in the log and on the job's stderr, exit 1; SIGTERM and SIGINT one line too, exit
    143 and 130. A failure of the machine (an OSError of a full disk, a read-only folder, denied
    permission, an I/O error) is one line naming it and its path, exit 1. Any other exception is a
    bug: its traceback goes to the log and the job's stderr
    gets one line pointing there, exit 1.
    """
    log = Path(snakemake.log[0]) if len(snakemake.log) else None
    try:
        with sigterm_unwinds(), _output_to(log) as real_stderr:
            try:
                yield
            except ClipbertError as e:
                _both(f"error: {e}", real_stderr)
                raise SystemExit(1) from None
            except Terminated as e:
                _both(f"error: {e}", real_stderr)
                raise SystemExit(e.exit_status) from None
            except KeyboardInterrupt:
                _both("error: interrupted (SIGINT)", real_stderr)
                raise SystemExit(130) from None
            except Exception as e:
                machine = machine_error(e)
                if machine is not None:
                    _both(f"error: {machine}", real_stderr)
                    raise SystemExit(1) from None
                traceback.print_exc()
                what = (str(e).splitlines() or [""])[0]
                where = log if log is not None else "the script"
                print(f"error: {where}: {type(e).__name__}: {what} (not bad input but a bug: "
                      "the traceback is in the log)", file=real_stderr, flush=True)
                raise SystemExit(1) from None
    except OSError as e:  # the log itself could not be written
        machine = machine_error(e, log)
        if machine is None:
            raise
        print(f"error: {machine}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _both(line: str, real_stderr: IO[str]) -> None:
    """One line to the log (our stderr) and to the job's own stderr (what Snakemake shows)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # a full disk: the log takes no more, the job's stderr still shows it
        pass
    if real_stderr is not sys.stderr:
        print(line, file=real_stderr, flush=True)


@contextlib.contextmanager
def _output_to(log: Path | None) -> Iterator[IO[str]]:
    """Point file descriptors 1 and 2 at `log`, so that C libraries and child processes write
    there too; opened for appending, so that a child writing to the log itself (torchrun) does
    not overwrite it. Yields the job's real stderr."""
    if log is None:
        yield sys.stderr
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    sys.stdout.flush()
    sys.stderr.flush()
    fh = open(log, "a", buffering=1)
    saved = os.dup(1), os.dup(2)
    try:
        with open(os.dup(2), "w", buffering=1) as real:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            faulthandler.enable(fh)  # a job killed by SIGBUS or SIGSEGV says where, in its log
            try:
                with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                    yield real
            finally:
                faulthandler.disable()
                with contextlib.suppress(OSError):  # a full disk: the error line is said already
                    fh.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        with contextlib.suppress(OSError):
            fh.close()
        for fd in saved:
            os.close(fd)


# ---- the config check -------------------------------------------------------------------------


def check_config(config: dict, workflow: Any, schema: str = "config/schema.yaml") -> None:
    """Check the Snakemake config against `schema` (relative to the Snakefile) and fill in its
    defaults, as Snakemake's `validate` does; each problem is one line naming the key path and
    the config file that set it, then exit 1."""
    schema_doc = yaml.safe_load(Path(workflow.basedir, schema).read_text())
    settings = workflow.config_settings
    given = [Path(f).absolute() for f in settings.configfiles]
    directive = [f for f in workflow.configfiles if Path(f).absolute() not in given]
    sources = [(_display(_original_path(f)), _load(f)) for f in directive]
    sources += [(_display(f), _load(f)) for f in given]
    if settings.config:
        given = yaml_scalars(_plain(settings.config), schema_doc)
        _set_given(config, given)
        sources.append(("--config", given))
    problems = config_problems(config, schema_doc, sources)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(1)


def config_problems(config: dict, schema: dict,
                    sources: Sequence[tuple[str, Mapping]] = ()) -> list[str]:
    """Validate `config` against the JSON `schema`, setting the schema's defaults in place; one
    `<source>: <key path>: <what>` line per problem. `sources` are (name, content) pairs in the
    order they were merged, to tell which of them set the offending key."""
    base = Draft202012Validator
    properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, props, instance, subschema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from properties(validator, props, instance, subschema)

    cls = validators.extend(base, {"properties": properties_with_defaults})
    lines: list[str] = []
    for e in sorted(cls(schema).iter_errors(config), key=lambda e: [str(p) for p in e.path]):
        path = list(e.path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = list(e.schema.get("properties", {}))
            for key in e.instance:
                if key in known:
                    continue
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                owner = _where(path) if path else "the top level"
                lines.append(f"{_who(sources, path + [key], every=True)}: {_where(path + [key])}:"
                             f" unknown key ({hint}{owner} takes {', '.join(known)})")
            continue
        lines.append(f"{_who(sources, path)}: {_where(path) or 'the top level'}: "
                     f"{_what(e)}")
    return lines


def _what(e: Any) -> str:
    """The problem of one schema error, in words, with the value found."""
    if e.validator == "type":
        kinds = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        return f"expected {' or '.join(kinds)}, got {e.instance!r}"
    if e.validator == "enum":
        return f"expected one of {', '.join(map(str, e.validator_value))}, got {e.instance!r}"
    if e.validator == "minimum":
        return f"must be at least {e.validator_value}, got {e.instance!r}"
    return e.message.replace("\n", " ")


def _where(path: Sequence[Any]) -> str:
    """`frames.stride`, `video.size[0]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _has(doc: Any, path: Sequence[Any]) -> bool:
    for part in path:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _who(sources: Sequence[tuple[str, Mapping]], path: Sequence[Any], every: bool = False) -> str:
    """The source whose value of `path` counts (the last to set it), or every one that set it."""
    names = [name for name, doc in sources if _has(doc, path)]
    if not names:
        return "the config"
    return ", ".join(names) if every else names[-1]


def _load(path: str | os.PathLike) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def _plain(value: Any) -> Any:
    """`--config` values as plain dicts (Snakemake keeps them in immutable maps)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def yaml_scalars(value: Any, schema: Mapping | None) -> Any:
    """`--config` values with their scalars read as YAML reads them (`5` an integer, `0.001` a
    float, `true`, `null`): Snakemake parses a nested value (`frames={stride: 5}`) with YAML's
    BaseLoader, which keeps every scalar inside it a string. A reading the schema does not allow
    there keeps the string (a path `2024` stays a path)."""
    schema = schema or {}
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        return {k: yaml_scalars(v, props.get(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [yaml_scalars(v, schema.get("items")) for v in value]
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    kinds = {type(None): {"null"}, bool: {"boolean"}, int: {"integer", "number"},
             float: {"number"}}.get(type(parsed))
    allowed = schema.get("type")
    if kinds is None or allowed is not None and not kinds & set(
            allowed if isinstance(allowed, list) else [allowed]):
        return value
    return parsed


def _set_given(config: dict, given: Mapping) -> None:
    """Put the `--config` values `given` into the merged `config`, key by key (a list or a
    scalar as a whole), where Snakemake merged them as parsed."""
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _set_given(config[key], value)
        else:
            config[key] = value


def _original_path(path: Any) -> str:
    """Snakemake hands the Snakefile's `configfile:` over as a copy in its source cache; the
    original path travels along as a flag."""
    flags = getattr(path, "flags", None) or {}
    return str(flags.get("sourcecache_entry") or path)


def _display(path: str | os.PathLike) -> str:
    """Relative to the working directory when inside it, as a user would type it."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# ---- each rule's memory and time limit -------------------------------------------------------

# (mem_mb, runtime in minutes) of each rule's job at two scales, so that any executor (a local
# run under `--resources mem_mb=N`, SLURM, another cluster plugin) gets them from the rule, not
# from one profile. `demo`: the embedded demo (synthetic scans, preset `tiny`, CPU), from its
# benchmark files (logs/benchmarks/*.tsv, max_rss and s: scene 125 MB / 3.3 s, the others under
# 80 MB; train's peak RSS 1.5 GB) with 2-10x headroom for another machine. `full`: 707 ScanNet
# scenes with `faithful`/`improved` on one GPU, from the rehearsal's benchmark files (scene:
# 94 MiB, 1.31 s; pack_lmdb: 90 MB of pages) and, for the GPU rules, the FLOP-counted estimate
# (~28 min for `improved`, ~6.8 h for `faithful` in fp32, at 35 % MFU) with a two-day limit for
# slower GPUs (a rerun resumes from its state).
# docs/performance.md has the table and the commands.
JOB_RESOURCES: dict[str, dict[str, tuple[int, int]]] = {
    "demo": {
        "demo_data": (1000, 10),
        "scene": (500, 5),
        "pack_lmdb": (1000, 10),
        "sqa_convert": (1000, 10),
        "train": (4000, 60),
        "infer": (3000, 30),
        "plot": (1500, 10),
    },
    "full": {
        "demo_data": (1000, 10),
        "scene": (1000, 5),
        "pack_lmdb": (4000, 60),
        "sqa_convert": (4000, 15),
        "train": (64000, 2880),
        "infer": (32000, 240),
        "plot": (4000, 30),
    },
}
# The blind baseline reads no video: a BERT pass per question (minutes on a GPU).
JOB_RESOURCES["full"] |= {"train_blind": (16000, 240), "infer_blind": (8000, 60)}
JOB_RESOURCES["demo"] |= {"train_blind": (3000, 30), "infer_blind": (2000, 15)}
# Every run of `runs` is a training and a scoring like the default target's.
for _scale in JOB_RESOURCES.values():
    _scale |= {"train_run": _scale["train"], "infer_run": _scale["infer"]}


def job_resources(rule: str, *, demo: bool) -> dict[str, int]:
    """`mem_mb` and `runtime` (minutes) of `rule`'s job: `demo` for the embedded demo's scale
    (its data or the `tiny` preset), otherwise full ScanNet's. A rule missing from the table is
    a bug here, not a setting: it fails loudly."""
    mem_mb, runtime = JOB_RESOURCES["demo" if demo else "full"][rule]
    return {"mem_mb": mem_mb, "runtime": runtime}
