"""vLLM's own engine behind our contract (engine.py), run in its own environment (install.sh); see README.md."""
