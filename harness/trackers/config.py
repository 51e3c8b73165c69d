"""What the experiment tracker does with each cell's result."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackerConfig:
    name: str = "wandb"  # wandb | none
    project: str = "infermatrix"
    entity: str | None = None
    # auto: online when W&B credentials are configured (WANDB_API_KEY, identity token or netrc), else offline.
    # offline runs upload later with `wandb sync <run_dir>`.
    mode: str = "auto"  # auto | offline | online | disabled
    dir: str | None = None  # where wandb writes its run folder; None = the cell's output dir
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.name not in ("wandb", "none"):
            raise ValueError(f"tracker.name must be 'wandb' or 'none', got '{self.name}'")
        if self.mode not in ("auto", "offline", "online", "disabled"):
            raise ValueError(f"tracker.mode must be auto, offline, online or disabled, got '{self.mode}'")
