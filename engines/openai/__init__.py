"""Any OpenAI-compatible completions server (vLLM serve, SGLang, TGI, llama.cpp server, infermatrix-serve)
as an engine: requests stream over HTTP; the server decides every technique."""
