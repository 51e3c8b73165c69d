"""`infermatrix-serve`: our engine behind an OpenAI-compatible streaming HTTP endpoint (loopback by default).

    infermatrix-serve --model-dir DIR [--port 8000] [--host 127.0.0.1] [--engine own] [--max-num-seqs 64]

Any engine with a step loop (`engine.llm` with add_request/step: own) serves; its options class's fields
become flags (`--max-num-seqs`, `--max-model-len`...) and so do the techniques (`--attention sdpa`). Port 0
picks a free port; the URL printed when ready names it. `--key-env VAR` makes the server require
`Authorization: Bearer $VAR` (the key stays in the environment, never on the command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import typing
from typing import Any

from engines.base import Technique
from engines.own.server import App, make_server
from engines.own.server_loop import ServingLoop


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any], dict[str, Any]]:
    """CLI args, the engine's options (its options class's fields as --flags) and technique values."""
    from engines import options_class

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--engine", default="own")
    engine_name = pre.parse_known_args(argv)[0].engine
    p = argparse.ArgumentParser(prog="infermatrix-serve", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="HF folder: config.json + safetensors (+ tokenizer)")
    p.add_argument("--engine", default="own", help="an engine with a step loop (default: own)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 = any free port (the printed URL names it)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--served-model-name", default=None, help="default: the model folder's name")
    p.add_argument("--key-env", default=None, help="env var holding the API key clients must send")
    for f in dataclasses.fields(Technique):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f"technique.{f.name}", default=None)
    cls = options_class(engine_name)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("name", "python"):
            continue
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind = next((k for k in (bool, int, float) if k in kinds), str)
        parse = (lambda v: v.lower() in ("1", "true", "on", "yes")) if kind is bool else kind
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f"option.{f.name}", type=parse, default=None)
    args = p.parse_args(argv)
    options = {k[7:]: v for k, v in vars(args).items() if k.startswith("option.") and v is not None}
    technique = {k[10:]: v for k, v in vars(args).items() if k.startswith("technique.") and v is not None}
    return args, options, technique


def technique_from(values: dict[str, str]) -> Technique:
    hints = {f.name: f.type for f in dataclasses.fields(Technique)}
    from engines import base

    out: dict[str, Any] = {}
    for key, value in values.items():
        enum_name = str(hints[key]).split(" |")[0]
        enum_cls = getattr(base, enum_name, None)
        out[key] = enum_cls(value) if enum_cls is not None else value.lower() in ("1", "true", "on", "yes")
    return Technique(**out)


def main(argv: list[str] | None = None) -> None:
    args, options, technique = parse_args(argv)
    from engines import create_engine
    from engines.base import ModelSpec
    from engines.environment import configure_threads, resolve_device

    configure_threads(args.threads)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model_dir))
    spec = ModelSpec(name=name, path=args.model_dir, dtype=args.dtype)
    engine = create_engine(args.engine, spec, technique_from(technique), options, resolve_device(args.device))
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except Exception as exc:  # token-id prompts still work
        print(f"[serve] no tokenizer in {args.model_dir} ({type(exc).__name__}): string prompts are refused")
        tokenizer = None
    api_key = os.environ.get(args.key_env) if args.key_env else None
    loop = ServingLoop(engine)
    loop.start()
    server = make_server(App(loop, tokenizer, name, api_key), args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"infermatrix-serve: {args.engine} serving '{name}' at http://{args.host}:{server.server_port}/v1",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()
        server.server_close()
        engine.close()


if __name__ == "__main__":
    main()
