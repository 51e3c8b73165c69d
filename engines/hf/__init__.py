"""Hugging Face transformers `generate` with static batches: the plain-PyTorch baseline."""
