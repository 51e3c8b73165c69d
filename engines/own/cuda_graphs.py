"""CUDA graphs for decode steps: capture the model's decode forward once per batch-size bucket, replay after.

A decode step has one new token per sequence, so its shapes depend only on the batch size. We capture
`model.forward_prepared` for buckets 1, 2, 4, ... up to max_num_seqs over static input buffers; a step
copies its inputs into the smallest bucket that fits, pads the rest (slot -1: store nothing; context 0:
attend to nothing), replays, and returns the real rows. Every launch inside must be free of host reads and
data-dependent shapes: the Triton kernels are; the torch reference and sdpa paths are not.
"""

from __future__ import annotations

import torch

from engines.base import UnsupportedTechnique
from engines.own.attn_metadata import AttnMetadata
from engines.own.model import CausalLM

GRAPH_SAFE_KERNELS = "engines.own.kernels.triton_attention"


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Powers of two below `max_num_seqs`, then `max_num_seqs` itself."""
    sizes, size = [], 1
    while size < max_num_seqs:
        sizes.append(size)
        size *= 2
    return sizes + [max_num_seqs]


class DecodeGraphRunner:
    """Callable as the model runner's decode hook: `(input_ids, positions, meta) -> hidden [B, hidden]`, or
    None when the batch is larger than every captured bucket (the caller then runs eagerly).

    The returned rows are a view of the graph's output buffer: use them before the next call.
    """

    def __init__(self, model: CausalLM, block_size: int, device: torch.device, max_num_seqs: int) -> None:
        kernels = getattr(model.attention, "kernels", None)
        if getattr(kernels, "__name__", None) != GRAPH_SAFE_KERNELS:
            raise UnsupportedTechnique("engine 'own': graphs=cuda_graphs needs attention=triton (other backends "
                                       "read sizes on the host, which a captured graph cannot)")  # fmt: skip
        self.model = model
        self.block_size = block_size
        max_blocks = -(-model.rope_cos.shape[0] // block_size)  # rope table length = longest sequence
        self.sizes = capture_sizes(max_num_seqs)
        largest = self.sizes[-1]
        with torch.inference_mode():
            self.input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
            self.positions = torch.zeros(largest, dtype=torch.int64, device=device)
            self.slot_mapping = torch.full((largest,), -1, dtype=torch.int64, device=device)
            self.block_tables = torch.zeros(largest, max_blocks, dtype=torch.int32, device=device)
            self.context_lens = torch.zeros(largest, dtype=torch.int32, device=device)
            self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
            pool = None
            for size in reversed(self.sizes):  # largest first: smaller graphs reuse its memory pool
                graph, out = self._capture(size, pool)
                self.graphs[size] = (graph, out)
                pool = graph.pool()

    def _static_meta(self, size: int) -> AttnMetadata:
        device = self.input_ids.device
        return AttnMetadata(
            slot_mapping=self.slot_mapping[:size],
            num_decode_tokens=size,
            decode_block_tables=self.block_tables[:size],
            decode_context_lens=self.context_lens[:size],
            prefill_block_tables=torch.zeros(0, self.block_tables.shape[1], dtype=torch.int32, device=device),
            prefill_cu_seqlens_q=torch.zeros(1, dtype=torch.int32, device=device),
            prefill_context_lens=torch.zeros(0, dtype=torch.int32, device=device),
        )

    def _capture(self, size: int, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        meta = self._static_meta(size)
        meta.backend_state = self.model.attention.prepare(meta, self.block_size)
        args = (self.input_ids[:size], self.positions[:size], meta)
        # Warm up on a side stream first: Triton compiles and cuBLAS picks algorithms outside the capture.
        # Buffers hold padding (slot -1), so neither warm-up nor capture writes the KV cache.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.forward_prepared(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self.model.forward_prepared(*args)
        return graph, out

    def bucket_for(self, batch: int) -> int | None:
        return next((size for size in self.sizes if size >= batch), None)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> torch.Tensor | None:
        batch = meta.num_decode_tokens
        size = self.bucket_for(batch)
        width = meta.decode_block_tables.shape[1]
        if size is None or width > self.block_tables.shape[1] or input_ids.shape[0] != batch:
            return None
        self.input_ids[:batch].copy_(input_ids)
        self.positions[:batch].copy_(positions)
        self.slot_mapping[:batch].copy_(meta.slot_mapping)
        self.context_lens[:batch].copy_(meta.decode_context_lens)
        # Table columns past `width` keep stale ids: the kernels read only blocks the context length covers.
        self.block_tables[:batch, :width].copy_(meta.decode_block_tables)
        self.input_ids[batch:size].zero_()
        self.positions[batch:size].zero_()
        self.slot_mapping[batch:size].fill_(-1)
        self.context_lens[batch:size].zero_()
        graph, out = self.graphs[size]
        graph.replay()
        return out[:batch]


def make_decode_runner(
    model: CausalLM, block_size: int, device: torch.device, max_num_seqs: int = 64
) -> DecodeGraphRunner:
    """The decode hook for `graphs=cuda_graphs` (see engines/own/technique_setup.py)."""
    if device.type != "cuda":
        raise UnsupportedTechnique("engine 'own': graphs=cuda_graphs needs a CUDA device")
    return DecodeGraphRunner(model, block_size, device, max_num_seqs)
