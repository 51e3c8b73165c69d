"""engine=llamacpp: llama.cpp (llama-cpp-python) on GGUF files. Install: engines/llamacpp/install.sh [PYTHON]."""
