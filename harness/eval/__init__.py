"""Accuracy through lm-eval for every engine (see README.md in this folder).

Kept light on import: harness.config imports harness.eval.config, and lm-eval loads only
when an evaluation actually runs.
"""

from __future__ import annotations

from harness.eval.baseline import find_baseline
from harness.eval.config import BaselineConfig, EvalConfig, GSM8KConfig, MMLUConfig
from harness.eval.evaluate import evaluate

__all__ = ["BaselineConfig", "EvalConfig", "GSM8KConfig", "MMLUConfig", "evaluate", "find_baseline"]
