"""Will a SLURM partition ever run this request? Checked against `sinfo` before submitting, because
SLURM either refuses an impossible request with a long submitit traceback (a GPU on a CPU-only
partition) or accepts it and leaves it PENDING forever (more CPUs or memory than any node has)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Any

from harness.hardware import gres_gpus

SINFO_FORMAT = "%P|%N|%c|%m|%G|%f|%T"  # partition (default marked *), node, CPUs, memory MB, gres, features, state
UNUSABLE = ("down", "drain", "fail", "inval", "maint", "reboot", "future", "unk")


@dataclass(slots=True)
class Node:
    partition: str
    default: bool
    name: str
    cpus: int
    mem_mb: int
    gres: list[str]  # e.g. ["gpu:h100:8"]
    features: set[str]
    state: str

    def gpus(self, gpu_type: str | None) -> int:
        return sum(gres_gpus(g.split("(")[0]) for g in self.gres if gpu_type is None or f":{gpu_type}:" in f"{g}:")

    def describe(self) -> str:
        gpus = ", ".join(self.gres) if self.gres else "no GPUs"
        features = ",".join(sorted(self.features)) or "none"
        return (f"partition {self.partition}{'*' if self.default else ''} node {self.name}: {self.cpus} CPUs, "
                f"{self.mem_mb} MB, {gpus}, features {features}, {self.state}")  # fmt: skip


def parse_sinfo(text: str) -> list[Node]:
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        partition, name, cpus, mem, gres, features, state = fields
        nodes.append(Node(
            partition=partition.rstrip("*"), default=partition.endswith("*"), name=name,
            cpus=int(re.sub(r"\D", "", cpus) or 0), mem_mb=int(re.sub(r"\D", "", mem) or 0),
            gres=[] if gres == "(null)" else [g for g in gres.split(",") if g],
            features=set() if features == "(null)" else set(features.split(",")), state=state,
        ))  # fmt: skip
    return nodes


def constraint_met(constraint: str | None, features: set[str]) -> bool:
    """`a&b` needs both, `a|b` either; other syntax (brackets, counts) is left for SLURM to judge."""
    if not constraint:
        return True
    if re.search(r"[\[\]()*]", constraint):
        return True
    return any(all(f in features for f in alt.split("&")) for alt in constraint.split("|"))


def unmet(node: Node, params: dict[str, Any]) -> list[str]:
    """What this node lacks for the request (empty: it can run it)."""
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    mem_gb = params.get("mem_gb")
    gres = params.get("slurm_gres")
    gpus = gres_gpus(gres) if gres else params.get("gpus_per_node") or 0
    gpu_type = gres.split(":")[1] if gres and gres.count(":") == 2 else None
    lacks = []
    if cpus > node.cpus:
        lacks.append(f"{cpus} CPUs")
    if mem_gb and mem_gb * 1024 > node.mem_mb:
        lacks.append(f"{mem_gb} GB of memory")
    if gpus > node.gpus(gpu_type):
        lacks.append(f"{gpus} {gpu_type or ''} GPU(s)".replace("  ", " "))
    if not constraint_met(params.get("slurm_constraint"), node.features):
        lacks.append(f"features '{params['slurm_constraint']}'")
    if any(s in node.state.lower() for s in UNUSABLE):
        lacks.append(f"a usable state (it is {node.state})")
    return lacks


def check_request(params: dict[str, Any], sinfo_text: str | None = None) -> str | None:
    """None when some node of the requested partition can run the request, else a message naming
    what was asked and what the partition has. Without sinfo, nothing is judged (None)."""
    if sinfo_text is None:
        try:
            done = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode != 0:
            return None
        sinfo_text = done.stdout
    nodes = parse_sinfo(sinfo_text)
    if not nodes:
        return None
    wanted = params.get("slurm_partition")
    in_partition = [n for n in nodes if (n.partition in str(wanted).split(",") if wanted else n.default)]
    available = "; ".join(n.describe() for n in nodes)
    if not in_partition:
        asked = f"partition '{wanted}' does not exist" if wanted else "the cluster has no default partition"
        return f"{asked}. Available (sinfo): {available}"
    reasons = {n.name: unmet(n, params) for n in in_partition}
    if any(not lacks for lacks in reasons.values()):
        return None
    lacking = "; ".join(f"{name} lacks {', '.join(lacks)}" for name, lacks in reasons.items())
    return (f"no node of partition '{in_partition[0].partition}' can run a cell ({lacking}). Available (sinfo): "
            f"{available}. Pick a hardware option that fits (hardware=cpu, hardware.cpus=..., hardware.mem_gb=..., "
            "hardware.partition=...)")  # fmt: skip
