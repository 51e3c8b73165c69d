"""`python -m harness.eval ...` is `infermatrix-lm-eval ...` without installing the project."""

from harness.eval.cli import main

main()
