"""Judge several candidate plans at once: worker processes on this machine, or tasks on Ray.

A fallback search round (core.search.strategies.speculate) hands a batch of precision plans to a `Judge`;
each plan is built and judged through the one evaluation path (workflows.evaluate) by a worker
that prepared the problem itself, once, from the user's ProblemSpec: engines are not picklable in
general, and a TensorRT worker must own its GPU. Only the parent process sees the answers, so the
journal stays the single record of the search.

- `ProcessJudge`: `jobs` worker processes (spawned, not forked: CUDA and onnxruntime's thread
  pools do not survive a fork). With several GPUs visible, worker i sees only GPU i mod count
  (CUDA_VISIBLE_DEVICES), so N jobs on N GPUs build N engines at once.
- `RayJudge` (`pip install trtdebug[ray]`): one Ray actor per job, placed by Ray on any host of
  the cluster (one GPU each for TensorRT engines); each call builds and judges one candidate.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

from trtdebug import logs
from trtdebug.core.analysis.metrics import Verdict
from trtdebug.core.model.feeds import feeds_sha256
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.search.user_check import CheckCommand
from trtdebug.errors import EngineError, UserError, first_line
from trtdebug.workflows.input_sets import InputSet, JudgedSet, evaluate_on_sets, prepare_extra_sets, sets_sha256
from trtdebug.workflows.problem import Case, ProblemSpec, prepare

GPU_ENGINES = ("tensorrt", "tensorrt-rtx")


class Judge(Protocol):
    jobs: int

    def judge(self, plans: Sequence[PrecisionPlan]) -> list[tuple[Verdict, float]]:
        """Each plan's verdict and the seconds its build and judgement took, in order."""
        ...

    def close(self) -> None: ...


class Worker:
    """Prepares the problem once; then builds and judges one plan per call."""

    def __init__(self, spec: ProblemSpec, check_template: str | None = None, device: str | None = None,
                 sets: Sequence[InputSet] = ()):
        if device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = device
        self.case: Case = prepare(spec)
        self.extra = prepare_extra_sets(self.case, sets)
        self.primary_label = sets[0].label if sets else "the first input set"
        self.check = CheckCommand(check_template) if check_template is not None else None

    def fingerprint(self) -> str:
        return problem_fingerprint(self.case, self.extra)

    def judge(self, plan: PrecisionPlan) -> tuple[Verdict, float]:
        started = time.perf_counter()
        verdict = evaluate_on_sets(self.case.problem, self.extra, self.case.engine, plan, self.case.bans, self.check,
                                   self.primary_label)
        return verdict, time.perf_counter() - started


def problem_fingerprint(case: Case, extra: Sequence[JudgedSet] = ()) -> str:
    """Model, feeds of every input set and plan default: a worker that prepared something else must not judge."""
    return feeds_sha256({}, case.problem.model.sha256, case.plan.default, sets_sha256(case.problem, extra))


def visible_gpus(engine: str) -> list[str]:
    """The GPUs workers are spread over: none for CPU engines."""
    if engine not in GPU_ENGINES:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")]


# -- worker processes ------------------------------------------------------------------------------

_WORKER: Worker | None = None


def _start_worker(spec: ProblemSpec, check_template: str | None, devices: Any, sets: Sequence[InputSet]) -> None:
    global _WORKER
    device = devices.get() if devices is not None else None
    if device is None:  # CPU engines: the workers share the cores instead of all taking all of them
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = Worker(spec, check_template, device, sets)


def _fingerprint() -> str:
    assert _WORKER is not None
    return _WORKER.fingerprint()


def _judge(plan: PrecisionPlan) -> tuple[Verdict, float]:
    assert _WORKER is not None
    return _WORKER.judge(plan)


class ProcessJudge:
    def __init__(self, spec: ProblemSpec, jobs: int, expected: str, check: CheckCommand | None = None,
                 sets: Sequence[InputSet] = ()):
        self.jobs = jobs
        context = multiprocessing.get_context("spawn")
        gpus = visible_gpus(spec.engine)
        devices = None
        if gpus:
            devices = context.Queue()
            for i in range(jobs):
                devices.put(gpus[i % len(gpus)])
        self._pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                         initargs=(spec, check.template if check else None, devices, tuple(sets)))
        if self._pool.submit(_fingerprint).result() != expected:
            self.close()
            raise UserError("a --jobs worker prepared other inputs than this process (a non-deterministic "
                            "--inputs source?); rerun with --jobs 1")

    def judge(self, plans: Sequence[PrecisionPlan]) -> list[tuple[Verdict, float]]:
        return list(self._pool.map(_judge, plans))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- Ray -------------------------------------------------------------------------------------------

# Ray's own connection timeouts (one attempt of about 11 s): without them a head that does not answer
# is retried for minutes. Set only where the user has not set them.
RAY_CONNECT_TIMEOUTS = {"RAY_gcs_server_port_wait_time_s": "1", "RAY_gcs_rpc_server_connect_timeout_s": "3",
                        "RAY_py_gcs_connect_timeout_s": "5"}
PROBE_SECONDS = 5.0


def ray_endpoint(address: str, source: str = "--ray-address") -> tuple[str, int] | None:
    """HOST and PORT of a Ray address (HOST:PORT or ray://HOST:PORT); None for 'auto' and 'local'
    (a cluster on this machine, found or started by Ray). Anything else is refused in one line."""
    if address in ("auto", "local"):
        return None
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or any(c.isspace() or c in "/@?#" for c in host) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise UserError(f"{source} {address!r} is not a Ray address: give HOST:PORT of the head node "
                        "(e.g. head-node:6379, the port `ray start --head` printed), ray://HOST:PORT or 'auto'")
    return host, int(port)


def connect_ray(ray: Any, address: str | None) -> None:
    """ray.init on `address` (None: RAY_ADDRESS, or a new local cluster), in bounded time: a head that
    does not answer is an EngineError within seconds, not minutes of retries; Ray's log lines (Python
    and native) reach the user only when verbose."""
    source = "--ray-address"
    if address is None and os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    endpoint = ray_endpoint(address, source) if address is not None else None
    where = f"the Ray cluster at {address} ({source})"
    if endpoint is not None:  # a closed port is told at once; Ray itself would retry for minutes
        try:
            socket.create_connection(endpoint, timeout=PROBE_SECONDS).close()
        except OSError as exc:
            raise EngineError(f"cannot reach {where}: {exc.strerror or first_line(exc)}; start it with "
                              f"`ray start --head --port {endpoint[1]}` on that host, or fix the address") from None
    try:
        with _native_stderr_hidden():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=logs.verbose,
                     logging_level=logging.INFO if logs.verbose else logging.ERROR)
    except (ConnectionError, TimeoutError):
        raise EngineError(f"cannot connect to {where}: no Ray head answered there (is it the port of a "
                          f"Ray {ray.__version__} head node, the one `ray start --head` printed?)") from None


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """Ray's C++ core logs retries straight to file descriptor 2: send them to a scratch file while
    connecting, unless verbose."""
    if logs.verbose:
        yield
        return
    with tempfile.TemporaryFile() as scratch:
        saved = os.dup(2)
        try:
            os.dup2(scratch.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class RayJudge:
    """One actor per job on a Ray cluster (`address` None: the one RAY_ADDRESS names, or a new local
    one). Every host must see the model and input files at the same paths."""

    def __init__(self, spec: ProblemSpec, jobs: int, expected: str, check: CheckCommand | None = None,
                 address: str | None = None, sets: Sequence[InputSet] = ()):
        for name, value in RAY_CONNECT_TIMEOUTS.items():  # read once, when Ray is imported
            os.environ.setdefault(name, value)
        try:
            import ray
        except ImportError:
            raise UserError("--jobs ray needs Ray: pip install 'trtdebug[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            connect_ray(ray, address)
        if jobs <= 0:
            jobs = max(1, int(ray.cluster_resources().get("GPU" if spec.engine in GPU_ENGINES else "CPU", 1)))
        self.jobs = jobs
        options: dict[str, Any] = {"num_gpus": 1} if spec.engine in GPU_ENGINES else {"num_cpus": 1}
        actor = ray.remote(**options)(Worker)
        template = check.template if check else None
        self._actors: list[Any] = [actor.remote(spec, template, None, tuple(sets)) for _ in range(jobs)]  # type: ignore[attr-defined]
        prints = ray.get([a.fingerprint.remote() for a in self._actors])
        if any(p != expected for p in prints):
            self.close()
            raise UserError("a Ray worker prepared other inputs than this process: every host must see the "
                            "same model and --inputs files at the same paths")

    def judge(self, plans: Sequence[PrecisionPlan]) -> list[tuple[Verdict, float]]:
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        return list(pool.map(lambda actor, plan: actor.judge.remote(plan), list(plans)))

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []


@contextlib.contextmanager
def judging(spec: ProblemSpec, case: Case, jobs: int | str, check: CheckCommand | None = None,
            ray_address: str | None = None, sets: Sequence[InputSet] = (),
            extra: Sequence[JudgedSet] = ()) -> Iterator[Judge | None]:
    """The judge for `jobs` (a count, or "ray"), or None to judge in this process; its workers stop
    however the block ends. `sets`: every input set (workflows.input_sets), the primary first, whose
    problems past the primary this process prepared as `extra`."""
    expected = problem_fingerprint(case, extra)
    judge: Judge | None
    if jobs == "ray" or ray_address is not None:  # --ray-address alone: one job per GPU (CPU) of the cluster
        judge = RayJudge(spec, 0 if jobs in ("ray", 1) else int(jobs), expected, check, ray_address, sets)
    else:
        count = int(jobs)
        if count < 1:
            raise UserError(f"jobs must be a positive count or 'ray', not {jobs!r}")
        judge = ProcessJudge(spec, count, expected, check, sets) if count > 1 else None
    try:
        yield judge
    finally:
        if judge is not None:
            judge.close()
