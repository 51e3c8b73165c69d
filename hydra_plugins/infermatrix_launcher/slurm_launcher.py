"""The launcher behind `hydra/launcher=slurm`: Hydra's submitit launcher, plus what a sweep on a real
cluster needs.

- One array job per distinct request: each cell's resources come from its own `hardware` node, so
  `hardware=h100,a100` submits an array to each GPU type.
- Every request is checked against what `sinfo` reports before anything is submitted: one the
  partition cannot satisfy exits 2 naming what is available, instead of a traceback or a job that
  stays PENDING forever (harness/slurm_check.py).
- Interrupting or terminating the launcher (Ctrl-C, SIGTERM, SIGHUP) cancels its jobs.
- Preemption is told from a time limit by the time the job has left: submitit's own rule counts any
  USR2 in the last min(20%, 10 min) of the limit as a timeout, i.e. every USR2 when timeout_min <= 10.
  A preempted cell is requeued; a timed-out one up to `max_num_timeout` times. A requeued job
  measures its cell again into the same folder (the harness writes its row only at the end).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict

from harness import record
from harness.slurm_check import check_request

INIT_KEYS = ("submitit_folder", "max_num_timeout")  # submitit's executor takes these at construction
# overrides that can change a cell's launcher settings; the others leave the request as it is
REQUEST_OVERRIDE = re.compile(r"^[+~]*(hardware|hydra\.launcher)[.=]")


def submitit_parameters(launcher: dict[str, Any]) -> dict[str, Any]:
    """The launcher node as submitit's update_parameters wants it (the plugin's own renaming), with a
    GPU request only where one is asked for: 0 GPUs is no request, and a gres already names its count."""
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in launcher.items()
              if k not in INIT_KEYS and k != "_target_"}  # fmt: skip
    if not params.get("gpus_per_node") or params.get("slurm_gres"):
        params["gpus_per_node"] = None
    return params


def time_left_s(job_id: str) -> float | None:
    """Seconds before the job's time limit, None when unknown or unlimited."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_time_left(out)


def parse_time_left(text: str) -> float | None:
    """squeue's %L ([D-]H:MM:SS, MM:SS, or UNLIMITED/INVALID) in seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def judge_timeout(signal_delay_s: int) -> None:
    """In the job: count a USR2 as a timeout only when the time limit is near (--signal may fire up to
    60 s early), so a preemption is always requeued whatever timeout_min is."""
    import submitit
    from submitit.core.job_environment import SignalHandler

    fraction_rule = SignalHandler.has_timed_out

    def has_timed_out(handler: SignalHandler) -> bool:
        left = time_left_s(submitit.JobEnvironment().job_id)
        if left is None:
            return fraction_rule(handler)
        timed_out = left <= signal_delay_s + 60
        print(f"[infermatrix] USR2 with {left:.0f} s of the time limit left: "
              f"{'time limit' if timed_out else 'preemption'}", file=sys.stderr, flush=True)  # fmt: skip
        return timed_out

    SignalHandler.has_timed_out = has_timed_out  # this process runs one job: the patch stays inside it


@contextmanager
def cancel_on_abort(jobs: Sequence[Any]) -> Iterator[None]:
    """Cancel the jobs if the block is interrupted (Ctrl-C, SIGTERM, SIGHUP), then exit 128 + the signal."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args else signal.SIGINT
        arrays = sorted({str(j.job_id).split("_")[0] for j in jobs})
        subprocess.run(["scancel", *arrays], timeout=60, check=False)
        print(f"[infermatrix] launcher stopped by {signal.Signals(signum).name}: cancelled SLURM job(s) "
              f"{' '.join(arrays)}; rerunning the sweep reuses the cells already measured",
              file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(128 + signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class SlurmLauncher(SubmititSlurmLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        judge_timeout(int(self.params.get("signal_delay_s", 120)))
        return super().__call__(*args, **kwargs)

    def request(self, overrides: Sequence[str]) -> tuple[dict[str, Any], str]:
        """The launcher node this cell resolves to (its own hardware option and overrides), and that option's name."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return OmegaConf.to_container(config.hydra.launcher, resolve=True), str(config.hardware.name)  # type: ignore[return-value]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # jobs resolve ${now:} from the config's cache: one folder
        sweep_dir.mkdir(parents=True, exist_ok=True)
        groups: dict[str, tuple[dict[str, Any], str, list[int]]] = {}
        requests: dict[tuple[str, ...], tuple[dict[str, Any], str]] = {}
        for index, overrides in enumerate(job_overrides):
            key = tuple(o for o in overrides if REQUEST_OVERRIDE.match(o))
            if key not in requests:
                requests[key] = self.request(overrides)
            launcher, hardware = requests[key]
            groups.setdefault(repr(sorted(launcher.items())), (launcher, hardware, []))[2].append(index)
        problems = [f"hardware={hardware}: {problem}" for launcher, hardware, _ in groups.values()
                    if (problem := check_request(submitit_parameters(launcher)))]  # fmt: skip
        if problems:  # every request checked before any is submitted
            print("[infermatrix] SLURM cannot run this sweep:\n  " + "\n  ".join(problems), file=sys.stderr, flush=True)
            raise SystemExit(2)

        jobs: dict[int, Any] = {}
        for launcher, _, indices in groups.values():
            executor = submitit.AutoExecutor(folder=launcher["submitit_folder"], cluster="slurm",
                                             slurm_max_num_timeout=launcher["max_num_timeout"])  # fmt: skip
            executor.update_parameters(**submitit_parameters(launcher))
            params = []
            for index in indices:
                num = initial_job_idx + index
                print(f"[infermatrix] #{num}: {' '.join(filter_overrides(job_overrides[index]))}", flush=True)
                params.append((list(job_overrides[index]), "hydra.sweep.dir", num, f"job_id_for_{num}",
                               Singleton.get_state()))  # fmt: skip
            for index, job in zip(indices, executor.map_array(self, *zip(*params))):
                jobs[index] = job
        ordered = [jobs[i] for i in range(len(job_overrides))]
        print(f"[infermatrix] submitted {len(ordered)} cell(s) as SLURM job(s) "
              f"{' '.join(sorted({str(j.job_id).split('_')[0] for j in ordered}))}; logs: {sweep_dir}/.submitit/",
              flush=True)  # fmt: skip
        with cancel_on_abort(ordered):
            return [self.collect(job, job_overrides[i], initial_job_idx + i) for i, job in enumerate(ordered)]

    def collect(self, job: Any, overrides: Sequence[str], num: int) -> JobReturn:
        """A job's return. A job SLURM ended without a result (time limit, cancelled, node failure) is
        recorded as a failed row of the sweep table, so the other cells are still collected and summarized."""
        try:
            return job.results()[0]
        except Exception as exc:
            reason = f"SLURM job {job.job_id} ended without a result ({job.state}): {str(exc).splitlines()[0]}"
            print(f"[infermatrix] cell #{num}: {reason}; log: {job.paths.stderr}", file=sys.stderr, flush=True)
            self.record_lost(overrides, num, reason)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = None
            return ret

    def record_lost(self, overrides: Sequence[str], num: int, reason: str) -> None:
        from harness.runner import cell_name, semantic_config

        assert self.hydra_context is not None and self.config is not None
        if OmegaConf.to_container(self.config.hydra.sweep)["subdir"] != "${hydra.job.num}":
            return  # a custom job folder: the cell's folder is not known here
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()  # as the job would have named its folder
        row = {"cell": cell_name(resolved), "status": "failed", "reason": reason,
               "config_hash": record.config_hash(semantic_config(resolved)), "sweep_id": "_".join(sweep_dir.parts[-2:]),
               "job_num": num, "job_dir": str(sweep_dir / str(num))}  # fmt: skip
        record.replace_row(sweep_dir / record.TABLE_NAME, row)
