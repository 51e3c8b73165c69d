"""Speculative decoding for engines/own: a proposer guesses up to k next tokens per decoding sequence, the
target scores all of them in one forward pass, and the verifier keeps the longest prefix the target agrees
with plus one token of its own, so every step emits 1..k+1 tokens and the output distribution stays the
target's. One concept per file: proposers (`ngram`, `early_exit`, `draft`), `verifier`, `verify_batch`
(packing), `runner` (one step), `stats`.
"""
