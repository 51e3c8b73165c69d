"""Our own inference engine: Llama-family model, paged KV cache, continuous-batching scheduler, sampler."""
