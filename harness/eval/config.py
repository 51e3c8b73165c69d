"""What to evaluate and how to judge it: plain dataclasses that OmegaConf can type-check.

A task is selected by giving it a config (`mmlu`, `gsm8k`); a task left at None is not run,
so the default EvalConfig() runs nothing. Hydra options `eval=mmlu`, `eval=gsm8k` and
`eval=[mmlu,gsm8k]` each fill their own key (see conf/eval/).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class MMLUConfig:
    num_fewshot: int = 5  # exemplars from the dev split, in file order (lm-eval's first_n sampler)
    limit: int | None = None  # questions per subject (the first N of its test split); None = all
    subjects: list[str] = field(default_factory=list)  # e.g. [anatomy, virology]; empty = all 57
    data_dir: str | None = None  # folder with {dev,test}/<subject>_{dev,test}.csv; overrides EvalConfig.data_dir


@dataclass
class GSM8KConfig:
    num_fewshot: int = 5  # exemplars from the train split
    limit: int | None = None  # the first N test problems; None = all 1319
    max_gen_toks: int = 256
    data_dir: str | None = None  # folder with train.jsonl and test.jsonl; overrides EvalConfig.data_dir


@dataclass
class BaselineConfig:
    """Which results-table row is this cell's baseline (see harness/eval/baseline.py).

    A row qualifies when it finished ok, has the same values as this cell for every key in
    `same`, has the values in `where`, and was evaluated with the same eval settings."""

    same: list[str] = field(default_factory=lambda: ["model"])
    where: dict[str, str] = field(default_factory=lambda: {"engine": "hf"})


@dataclass
class EvalConfig:
    mmlu: MMLUConfig | None = None
    gsm8k: GSM8KConfig | None = None
    # root holding mmlu/ and gsm8k/ laid out as the original releases; None = the HF hub
    data_dir: str | None = None
    batch_size: int = 16  # sequences per Engine.score call
    apply_chat_template: bool = False  # also makes few-shot exemplars separate chat turns
    log_samples: bool = True  # write out_dir/samples_<task>.jsonl
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    gate_ratio: float = 0.99  # pass when every metric >= gate_ratio x the baseline's (MLPerf's 99%)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.gate_ratio <= 1.0:
            raise ValueError(f"eval.gate_ratio must be in (0, 1], got {self.gate_ratio}")
        for name, task in self.selected().items():
            if task.num_fewshot < 0:
                raise ValueError(f"eval.{name}.num_fewshot must be >= 0, got {task.num_fewshot}")
            if task.limit is not None and task.limit < 1:
                raise ValueError(f"eval.{name}.limit must be >= 1 or null, got {task.limit}")

    def selected(self) -> dict[str, MMLUConfig | GSM8KConfig]:
        """Tasks to run, by name, in a fixed order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in TASKS and getattr(self, f.name)}


TASKS = ("mmlu", "gsm8k")
