"""The training plan: every shipped package as one declarative entry, and the runner behind
``icm plan``.

A plan (TOML, ``icm_codec/weights/plan.toml``) lists jobs; each names its kind, λ, steps and
what it starts from (``init``: another job whose package warm-starts it) and, for dependent
layers, the ``base`` job it refines. The runner starts every job whose dependencies have
finished, ``jobs`` at a time (on a CPU: single-thread processes, two beside each other; on a
GPU: all at once), each an ``icm train`` process in ``<runs>/<job id>``. Runs resume from their
checkpoint. A job without a checkpoint whose package is already shipped (a previous session's
partial run) continues from that package at its step count, so a plan spans sessions even when
their checkpoints do not survive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..kinds import LayerKind

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..configflags import flag_names
from .config import TrainConfig

__all__ = ["Job", "Plan", "job_status", "load_plan", "run_plan"]

DEFAULT_PLAN = Path(__file__).resolve().parent.parent / "weights" / "plan.toml"
SHIPPED = DEFAULT_PLAN.parent

# TOML keys of a job -> `icm train` flags: a TrainConfig field's name (λ: `lambda`) and flag.
# The plan sets the rest itself (kind, data, base, init, id; out, device, threads).
_SET_BY_PLAN = {"kind", "data", "base", "init", "out", "model_id", "device", "threads", "extra"}
_FLAGS = {("lambda" if name == "lmbda" else name): flags[0]
          for name, flags in flag_names(TrainConfig).items()
          if flags and name not in _SET_BY_PLAN}
# keys of switches (flags without a value) -> their default: the flag is passed when it differs
_SWITCHES = {("lambda" if f.name == "lmbda" else f.name): f.default
             for f in fields(TrainConfig) if isinstance(f.default, bool)}


@dataclass
class Job:
    id: str  # the model id of the package it produces
    kind: str  # base | enhancement | dc | single
    settings: dict[str, Any]
    data: list[str]
    init: str | None = None  # job id
    base: str | None = None  # job id

    @property
    def steps(self) -> int:
        return int(self.settings["steps"])

    @property
    def needs(self) -> list[str]:
        return [j for j in (self.init, self.base) if j]


@dataclass
class Plan:
    jobs: dict[str, Job]
    path: Path | None = None

    def order(self) -> list[Job]:
        """Jobs in dependency order (every job after the jobs it needs)."""
        done: list[str] = []
        pending = list(self.jobs)
        while pending:
            ready = [j for j in pending if all(n in done for n in self.jobs[j].needs)]
            if not ready:
                raise ValueError(f"plan has a dependency cycle among {pending}")
            done += ready
            pending = [j for j in pending if j not in ready]
        return [self.jobs[j] for j in done]

    def selected(self, only: list[str] | None = None) -> list[Job]:
        """The jobs ``only`` names (ids, each argument one id or several joined by commas),
        in dependency order; every job when it names none. An unknown id is an error."""
        ids = {i for arg in only or [] for i in arg.split(",") if i}
        unknown = ids - set(self.jobs)
        if unknown:
            raise ValueError(f"no such job in the plan: {sorted(unknown)} "
                             "(`icm plan status` lists the ids)")
        return [j for j in self.order() if not ids or j.id in ids]


def load_plan(path: str | Path = DEFAULT_PLAN, device: str = "cpu",
              steps_scale: float | None = None) -> Plan:
    """Read and check a plan: unknown keys, missing dependencies and cycles are errors.

    The ``[device.<type>]`` table of the plan overrides the settings of every job on that
    device type (e.g. larger batches on a GPU); its ``steps_scale`` (or ``steps_scale`` given
    here, e.g. a few steps for a dry run) scales every job's steps.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read training plan {path}: {e}") from e
    defaults = raw.get("defaults", {})
    profile = dict(raw.get("device", {}).get(device.split(":")[0], {}))
    scale = float(profile.pop("steps_scale", 1.0) if steps_scale is None else steps_scale)
    profile.pop("steps_scale", None)
    data = list(defaults.pop("data", []))
    jobs: dict[str, Job] = {}
    for entry in raw.get("job", []):
        entry = dict(entry)
        jid = entry.pop("id", None)
        if not jid:
            raise ValueError(f"{path}: every [[job]] needs an id")
        if jid in jobs:
            raise ValueError(f"{path}: job {jid!r} appears twice")
        kind = entry.pop("kind", None)
        try:
            layer_kind = LayerKind.parse(kind)
        except ValueError as e:
            raise ValueError(f"{path}: job {jid!r}: {e}") from None
        job = Job(jid, kind, {}, list(entry.pop("data", data)), entry.pop("init", None),
                  entry.pop("base", None))
        settings = {**defaults, **entry, **profile}
        unknown = set(settings) - set(_FLAGS)
        if unknown:
            raise ValueError(f"{path}: job {jid!r} has unknown keys {sorted(unknown)}")
        if "lambda" not in settings or "steps" not in settings:
            raise ValueError(f"{path}: job {jid!r} needs lambda and steps")
        if layer_kind.needs_parent and not job.base:
            raise ValueError(f"{path}: {kind} job {jid!r} needs a base job")
        settings["steps"] = max(1, round(int(settings["steps"]) * scale))
        for key in ("warmup", "decay", "val_every"):  # a scaled run keeps its shape
            if key in settings and scale != 1:
                settings[key] = max(1, round(int(settings[key]) * scale))
        job.settings = settings
        jobs[jid] = job
    for job in jobs.values():
        for need in job.needs:
            if need not in jobs:
                raise ValueError(f"{path}: job {job.id!r} needs unknown job {need!r}")
    plan = Plan(jobs, path)
    plan.order()
    return plan


def _package_meta(path: Path) -> dict[str, Any] | None:
    """The training record of a package (read without loading its weights), None if absent."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return dict(json.loads(zf.read("config.json")).get("meta", {}))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _package_steps(path: Path) -> int | None:
    meta = _package_meta(path)
    return None if meta is None else int(meta.get("steps", 0))


def _plan_job_of(path: Path) -> str | None:
    """The plan job that trained a package (older packages, trained by hand, have none)."""
    meta = _package_meta(path)
    return None if meta is None else meta.get("plan_job")


def _checkpoint_steps(path: Path) -> int | None:
    if not path.is_file():
        return None
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
    except Exception:  # a torn or foreign file: the trainer reports it when it resumes
        return None


def _exported_finished(job: Job, runs: Path) -> bool:
    steps = _package_steps(runs / job.id / "model.icmpkg")
    return steps is not None and steps >= job.steps


def _finished_package(job: Job, runs: Path, shipped: Path = SHIPPED) -> Path | None:
    """The finished package of ``job``: its run's export, else the shipped package that this
    plan job trained to its full step count (a fresh machine, whose runs folder is empty, still
    starts the jobs that build on shipped ones); None while it is unfinished."""
    if _exported_finished(job, runs):
        return runs / job.id / "model.icmpkg"
    own = shipped / f"{job.id}.icmpkg"
    meta = _package_meta(own) or {}  # one read of the card: absent or torn reads as unfinished
    if meta.get("plan_job") == job.id and int(meta.get("steps", 0)) >= job.steps:
        return own
    return None


def _needed_package(plan: Plan, job_id: str, runs: Path, shipped: Path) -> Path:
    """Where a dependent job finds the package of ``job_id`` (its run's when unfinished: the
    runner only starts a job once what it needs has finished)."""
    return _finished_package(plan.jobs[job_id], runs, shipped) or runs / job_id / "model.icmpkg"


def job_status(job: Job, runs: Path, shipped: Path = SHIPPED) -> dict[str, Any]:
    """Steps done (checkpoint or exported package), steps planned and whether it finished."""
    run = runs / job.id
    pkg = run / "model.icmpkg"
    done = _checkpoint_steps(run / "last.pt")
    exported = _package_steps(pkg) if pkg.is_file() else None
    shipped_steps = _package_steps(shipped / f"{job.id}.icmpkg")
    steps = max(s for s in (done, exported, 0) if s is not None)
    return {"job": job.id, "kind": job.kind, "steps": steps, "planned": job.steps,
            "finished": _finished_package(job, runs, shipped) is not None,
            "shipped_steps": shipped_steps, "package": str(pkg) if exported is not None else None}


def train_args(job: Job, plan: Plan, runs: Path, data_root: Path, device: str,
               shipped: Path = SHIPPED) -> list[str]:
    """The ``icm train`` arguments of ``job`` (device profile applied)."""
    settings = job.settings
    args = [job.kind, "--data", *[str(data_root / d) for d in job.data],
            "--out", str(runs / job.id), "--model-id", job.id, "--device", device]
    for key, value in settings.items():
        if key in _SWITCHES:
            args += [_FLAGS[key]] if bool(value) != _SWITCHES[key] else []
        elif key in _FLAGS:
            args += [_FLAGS[key], str(value)]
    run = runs / job.id
    own = shipped / f"{job.id}.icmpkg"
    if not (run / "last.pt").is_file() and _plan_job_of(own) == job.id:
        args += ["--init", str(own)]  # continue a previous session's shipped run
    elif job.init:
        args += ["--init", str(_needed_package(plan, job.init, runs, shipped))]
    if job.base:
        args += ["--base", str(_needed_package(plan, job.base, runs, shipped))]
    if device == "cpu":
        args += ["--threads", "1"]
    return [*args, "--plan-job", job.id]


def run_plan(plan: Plan, runs: Path, data_root: Path, *, device: str = "cpu", jobs: int = 2,
             only: list[str] | None = None, nice: int = 10, poll_s: float = 5.0,
             max_minutes: float | None = None, shipped: Path = SHIPPED) -> int:
    """Run the plan's unfinished jobs; see :func:`_run_plan`. SIGTERM stops it the way Ctrl-C
    does: running jobs checkpoint and export before the runner returns."""
    from .stopping import stop_signals_interrupt

    with stop_signals_interrupt():
        return _run_plan(plan, runs, data_root, device, jobs, only, nice, poll_s, max_minutes,
                         shipped)


def _run_plan(plan: Plan, runs: Path, data_root: Path, device: str, jobs: int,
              only: list[str] | None, nice: int, poll_s: float, max_minutes: float | None,
              shipped: Path = SHIPPED) -> int:
    """Run the plan's unfinished jobs (``only``: those and nothing else) until all are done;
    returns the number of jobs that failed. A job another process is training (its run
    directory locked, e.g. by an earlier runner) is waited for and counts against ``jobs``.

    After ``max_minutes`` the running jobs are interrupted (each checkpoints and exports what it
    has) and nothing new starts: a session's or a GPU lease's end loses no work."""
    import signal

    from .trainer import run_in_use

    wanted = plan.selected(only)
    runs.mkdir(parents=True, exist_ok=True)
    running: dict[str, subprocess.Popen] = {}
    failed: set[str] = set()
    finished = {j.id for j in plan.jobs.values() if _finished_package(j, runs, shipped)}
    slots = jobs if jobs > 0 else len(wanted)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    stopping = False
    while True:
        if deadline is not None and time.monotonic() > deadline and not stopping:
            stopping = True
            print(f"[plan] time is up: interrupting {sorted(running)}", flush=True)
            for proc in running.values():
                proc.send_signal(signal.SIGINT)
        for jid, proc in list(running.items()):
            if proc.poll() is not None:
                del running[jid]
                if proc.returncode == 0 and _exported_finished(plan.jobs[jid], runs):
                    finished.add(jid)
                    print(f"[plan] {jid} finished", flush=True)
                elif proc.returncode == 0 and stopping:
                    print(f"[plan] {jid} stopped early; it resumes next time", flush=True)
                else:
                    failed.add(jid)
                    print(f"[plan] {jid} failed (exit {proc.returncode}); see "
                          f"{runs / jid / 'train.log'}", flush=True)
        todo = [j for j in wanted if j.id not in finished | failed | set(running)]
        finished |= {j.id for j in todo if _exported_finished(j, runs)}  # done elsewhere
        todo = [j for j in todo if j.id not in finished]
        blocked = [j for j in todo if any(n in failed for n in j.needs)]
        for j in blocked:
            failed.add(j.id)
            print(f"[plan] {j.id} skipped: a job it needs failed", flush=True)
        elsewhere = {j.id for j in todo if run_in_use(runs / j.id)}
        for job in todo:
            if stopping or len(running) + len(elsewhere) >= slots:
                break
            if job.id in failed | elsewhere or not all(n in finished for n in job.needs):
                continue
            args = train_args(job, plan, runs, data_root, device, shipped)
            (runs / job.id).mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else None
            cmd = [sys.executable, "-m", "icm_codec.cli", "train", *args]
            print(f"[plan] start {job.id}: icm train {' '.join(args)}", flush=True)
            running[job.id] = _launch(cmd, runs / job.id / "train.log", env, nice)
        if not running and (not elsewhere or stopping):
            break
        try:
            time.sleep(poll_s)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the way a deadline does
            deadline = time.monotonic()
    # jobs left waiting for a job this run does not train (--only without it): say so and
    # count them as not done, instead of a silent exit 0 that trained nothing
    waiting = [] if stopping else [j for j in wanted if j.id not in finished | failed]
    for job in waiting:
        missing = [n for n in job.needs if n not in finished]
        print(f"[plan] {job.id} not started: it needs {', '.join(missing)} finished first "
              f"(run {'them' if len(missing) > 1 else 'it'} too, or leave out --only)",
              flush=True)
    return len(failed & {j.id for j in wanted}) + len(waiting)


def _launch(cmd: list[str], log: Path, env: dict[str, str] | None, nice: int
            ) -> subprocess.Popen:
    """One job's process, in its own session: a Ctrl-C in the runner's terminal reaches the
    runner alone, which then interrupts its jobs in order."""
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True,
                            preexec_fn=(lambda: _lower_priority(nice)) if nice else None)


def _lower_priority(nice: int) -> None:
    """Nice the job, and its scheduling group too: with Linux's autogroups (the default on
    desktop and many server kernels) every new session is its own group and groups share the
    CPU equally whatever their processes' nice values, so a niced job in its own session took
    as much CPU as an interactive command (measured in session 11: an evaluation started in
    another session got a third of the CPU beside two `nice 4` jobs)."""
    os.nice(nice)
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroups (other kernels, containers): the plain nice is what counts
        pass


def _counterpart(job: Job, shipped: Path) -> tuple[Path, Path | None] | None:
    """The shipped package this job would replace (same kind, λ and m) and its base."""
    from ..registry import list_packages

    kind = LayerKind.parse(job.kind).label
    infos = list_packages([shipped])
    by_digest = {i.digest: i.path for i in infos}
    for info in infos:
        meta = _package_meta(info.path) or {}
        if info.kind != kind or meta.get("lambda") != job.settings["lambda"]:
            continue
        import json
        import zipfile

        with zipfile.ZipFile(info.path) as zf:
            config = json.loads(zf.read("config.json"))
        if kind == "enhancement" and config.get("m") != job.settings.get("m", 4):
            continue
        base = (by_digest.get(config.get("base_digest", ""))
                if LayerKind.parse(kind).needs_parent else None)
        return info.path, base
    return None


def compare(plan: Plan, runs: Path, data_root: Path, shipped: Path = SHIPPED,
            only: list[str] | None = None) -> list[dict[str, Any]]:
    """Each trained job against the shipped package it would replace, on the held-out photos
    of the plan's data, by real bytes: better = a lower training objective at the job's λ, or
    no more bits for no less PSNR (a model still far from its λ's operating point can be
    better everywhere on the curve and yet not by the objective at that one λ)."""
    from .score import heldout_images, score_package

    images = heldout_images([data_root / d for d in next(iter(plan.jobs.values())).data])
    rows = []
    for job in plan.selected(only):
        pkg = runs / job.id / "model.icmpkg"
        if not pkg.is_file():
            continue
        base = _needed_package(plan, job.base, runs, shipped) if job.base else None
        new = score_package(pkg, images, base)
        old_pair = _counterpart(job, shipped)
        old = score_package(old_pair[0], images, old_pair[1]) if old_pair else None
        rows.append({"job": job.id, "steps": _package_steps(pkg), "new": new, "old": old,
                     "old_package": old_pair[0].name if old_pair else None,
                     "dominates": old is not None and new.total_bpp <= old.total_bpp
                     and new.psnr >= old.psnr,
                     "better": old is None or new.objective < old.objective
                     or (new.total_bpp <= old.total_bpp and new.psnr >= old.psnr)})
    return rows
