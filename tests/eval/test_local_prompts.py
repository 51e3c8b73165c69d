"""Local data gives the prompts lm-eval's hub task definitions give (no network).

The expected prompts apply the built-in task YAMLs' own templates to documents converted
here, independently, from the original release files to the hub schema."""

from __future__ import annotations

import csv
import json

import pytest

from harness.eval.config import EvalConfig, GSM8KConfig, MMLUConfig
from harness.eval.tasks import builtin_tasks_dir, plan_tasks

pytestmark = pytest.mark.slow  # about 2 minutes on a busy 2-core CPU: the task index and datasets load

SUBJECTS = ["anatomy", "high_school_us_history"]  # a short and a long (multi-line) prompt


def builtin(relative: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(builtin_tasks_dir() / relative, resolve_func=False)


def render(template: str, doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(template, doc)


def hub_docs(csv_path, subject: str) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])} for r in csv.reader(f)]


@pytest.fixture(scope="module")
def local_tasks(shared_data, tmp_path_factory):
    from lm_eval.tasks import TaskManager

    cfg = EvalConfig(mmlu=MMLUConfig(subjects=SUBJECTS), gsm8k=GSM8KConfig(), data_dir=str(shared_data))
    plans, folder = plan_tasks(cfg, tmp_path_factory.mktemp("eval-cache"))
    loaded = TaskManager(include_path=str(folder)).load([p.lm_eval_name for p in plans])
    return loaded["tasks"]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_local_mmlu_five_shot_prompts_match_the_builtin_templates(local_tasks, shared_data, subject):
    spec = builtin(f"mmlu/default/mmlu_{subject}.yaml")
    task = local_tasks[f"infermatrix_mmlu_local_{subject}"]
    dev = hub_docs(shared_data / "mmlu" / "dev" / f"{subject}_dev.csv", subject)
    test = hub_docs(shared_data / "mmlu" / "test" / f"{subject}_test.csv", subject)
    shots = "".join(
        render(spec["doc_to_text"], d) + " " + spec["doc_to_choice"][d["answer"]] + "\n\n" for d in dev
    )
    docs = list(task.test_docs())
    assert len(docs) == len(test)
    for index in (0, 1, len(test) - 1):
        assert docs[index] == test[index]
        expected = spec["description"] + shots + render(spec["doc_to_text"], test[index])
        assert task.fewshot_context(docs[index], num_fewshot=5) == expected
        assert task.doc_to_target(docs[index]) == test[index]["answer"]


def test_local_gsm8k_prompts_use_builtin_templates_and_train_exemplars(local_tasks, shared_data):
    spec = builtin("gsm8k/gsm8k.yaml")
    task = local_tasks["infermatrix_gsm8k_local"]
    test = [json.loads(line) for line in open(shared_data / "gsm8k" / "test.jsonl", encoding="utf-8")]
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")]
    exemplars = {render(spec["doc_to_text"], d) + " " + render(spec["doc_to_target"], d) for d in train}
    docs = list(task.test_docs())
    assert docs[:3] == test[:3] and len(docs) == len(test)
    for doc in docs[:3]:
        blocks = task.fewshot_context(doc, num_fewshot=5).split("\n\n")
        assert blocks[-1] == render(spec["doc_to_text"], doc)
        shots = "\n\n".join(blocks[:-1]).split("\n\nQuestion: ")
        shots = [shots[0]] + ["Question: " + s for s in shots[1:]]
        assert len(shots) == 5 and all(s in exemplars for s in shots)
        assert task.doc_to_target(doc) == render(spec["doc_to_target"], doc)
        assert task.config.generation_kwargs["until"] == spec["generation_kwargs"]["until"]


def test_local_gsm8k_keeps_both_answer_extractions(local_tasks):
    filters = [f["name"] for f in local_tasks["infermatrix_gsm8k_local"].config.filter_list]
    assert filters == ["strict-match", "flexible-extract"]


def test_gsm8k_answers_with_thousands_separators_score_under_both_extractions(local_tasks):
    from lm_eval.api.instance import Instance

    task = local_tasks["infermatrix_gsm8k_local"]
    doc = next(d for d in task.test_docs() if "#### 2,125" in d["answer"])
    responses = {"worked": "She pays 2,000 + 125 = 2,125 dollars.\n#### 2,125", "wrong": "She pays 2,000 dollars.\n#### 2,000"}
    scores = {}
    for name, text in responses.items():
        instance = Instance("generate_until", doc, ("", {}), 0, ("gsm8k", 0, 1))
        instance.resps = [text]
        for ensemble in task._filters:
            ensemble.apply([instance])
        scores[name] = {f: task.process_results(doc, [r])["exact_match"] for f, r in instance.filtered_resps.items()}
    assert scores["worked"] == {"strict-match": 1.0, "flexible-extract": 1.0}
    assert scores["wrong"] == {"strict-match": 0.0, "flexible-extract": 0.0}
