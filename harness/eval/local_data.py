"""Local copies of the evaluation data, laid out as the original releases.

MMLU (Hendrycks et al.): `<dir>/{dev,test}/<subject>_{dev,test}.csv`, no header, six columns
(question, A, B, C, D, answer letter). lm-eval's MMLU tasks read the `cais/mmlu` hub schema
{question, subject, choices[4], answer: 0-3}, so the CSVs are converted to that schema as
JSON Lines in a cache folder at run time (never into the repository).

GSM8K (OpenAI): `<dir>/{train,test}.jsonl` with {question, answer}, already the hub schema,
so those files are read where they are.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

MMLU_SPLITS = ("dev", "test")
GSM8K_SPLITS = ("train", "test")
LETTERS = "ABCD"


def find_release(data_dir: str | Path, task: str, marker: str) -> Path:
    """The release folder for `task`: `data_dir` itself or its `<task>/` subfolder, whichever
    holds `marker` (a file or folder the release always has)."""
    root = Path(data_dir).expanduser()
    for candidate in (root / task, root):
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(f"no {task} data under {root}: expected {root / task / marker} or {root / marker}")


def mmlu_rows(csv_path: Path, subject: str) -> list[dict]:
    """One MMLU CSV as hub-schema rows, in file order."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for line_no, fields in enumerate(csv.reader(f), start=1):
            if len(fields) != 6 or fields[5].strip() not in LETTERS:
                raise ValueError(f"{csv_path}:{line_no}: expected 6 fields ending in A-D, got {fields!r}")
            question, *choices, answer = fields
            rows.append({"question": question, "subject": subject, "choices": choices, "answer": LETTERS.index(answer.strip())})
    return rows


def fingerprint(paths: list[Path]) -> str:
    """Changes when any file's name, size or modification time changes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def convert_mmlu(release: Path, subjects: list[str], cache: Path) -> dict[str, dict[str, str]]:
    """Hub-schema JSON Lines for each subject's dev and test splits; returns
    subject -> split -> file path. Files are written once per source fingerprint."""
    sources = {(s, split): release / split / f"{s}_{split}.csv" for s in subjects for split in MMLU_SPLITS}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"MMLU files missing under {release}: {', '.join(missing[:5])}")
    target = cache / f"mmlu-{fingerprint(list(sources.values()))}"
    files: dict[str, dict[str, str]] = {}
    for (subject, split), source in sources.items():
        out = target / subject / f"{split}.jsonl"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = out.with_suffix(".tmp")
            staging.write_text("".join(json.dumps(row) + "\n" for row in mmlu_rows(source, subject)), encoding="utf-8")
            staging.replace(out)  # atomic: a present file is complete
        files.setdefault(subject, {})[split] = str(out)
    return files


def gsm8k_files(release: Path) -> dict[str, str]:
    files = {split: release / f"{split}.jsonl" for split in GSM8K_SPLITS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"GSM8K files missing: {', '.join(missing)}")
    return {split: str(path) for split, path in files.items()}
