"""Our own inference engine, written in PyTorch.

One step of the loop (`llm_engine.LLMEngine.step`) is schedule -> run model -> postprocess:
- `scheduler.py` picks sequences and token counts under the token budget (continuous or static batching,
  chunked prefill, preemption by recompute); `sequence.py` holds per-request state, whose single
  `num_computed_tokens` counter covers prefill chunks, prefix-cache hits and decode alike.
- `block_manager.py` (paged KV, prefix cache) or `contiguous_allocator.py` (one max-length region per
  sequence) hand out KV blocks; `kv_pool.py` sizes the pool from a memory budget.
- `model_runner.py` packs the batch (`attn_metadata.py`), runs `model.py` (weights from `loader.py`,
  architecture from `config.py`, RoPE from `rope.py`) with an attention backend from `attention.py`, and
  samples with `sampler.py`.
`engine.py` puts it behind the project's Engine contract; `scoring.py` serves teacher-forced log-probs.
"""
