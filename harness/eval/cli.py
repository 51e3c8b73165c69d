"""`infermatrix-lm-eval`: lm-eval's own CLI with the `infermatrix` model registered.

Every lm-eval argument works as usual (with `--model infermatrix` and no `--batch_size`, the
batch size is our default of 16 sequences per engine call, printed as such). One more: `--local_data DIR` (a root holding mmlu/
and gsm8k/ as the original releases) writes the local-data task YAMLs and adds them with
`--include_path`, so `--tasks infermatrix_mmlu,infermatrix_gsm8k_local` run lm-eval's MMLU
(all subjects, weighted by size) and GSM8K on those files.

    infermatrix-lm-eval --model infermatrix --model_args engine=own,model=embedded \\
        --tasks gsm8k --limit 5 --device cpu
"""

from __future__ import annotations

import sys

from harness.eval.register import DEFAULT_BATCH_SIZE, MODEL_NAME, register


def take_local_data(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without `--local_data DIR` (or `--local_data=DIR`), and DIR."""
    rest, data_dir = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--local_data":
            data_dir = next(args, None)
            if data_dir is None:
                raise SystemExit("--local_data needs a folder")
        elif arg.startswith("--local_data="):
            data_dir = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, data_dir


def with_batch_size(argv: list[str]) -> list[str]:
    """lm-eval's CLI defaults to --batch_size 1 and prints it; for the infermatrix model, whose engines batch,
    give our default explicitly when the user gave none, so the printed size is the one used."""
    model = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--model"), None)
    model = model or next((a.split("=", 1)[1] for a in argv if a.startswith("--model=")), None)
    given = any(a in ("--batch_size", "-b", "--config", "-C") or a.startswith(("--batch_size=", "--config=")) for a in argv)
    return argv if model != MODEL_NAME or given else [*argv, "--batch_size", str(DEFAULT_BATCH_SIZE)]


def main() -> None:
    argv, data_dir = take_local_data(sys.argv[1:])
    argv = with_batch_size(argv)
    if data_dir:
        from harness.eval.config import EvalConfig, GSM8KConfig, MMLUConfig
        from harness.eval.evaluate import eval_cache
        from harness.eval.tasks import plan_tasks

        _, folder = plan_tasks(EvalConfig(mmlu=MMLUConfig(), gsm8k=GSM8KConfig(), data_dir=data_dir), eval_cache())
        argv += ["--include_path", str(folder)]
    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
