"""fraqtl-bench: paired, reproducible receipts (JSON + markdown + PNG) for every KV-cache arm.

A client of ``engine`` like the app, never imported by it. Each arm runs in its own worker
process (:mod:`bench.worker`) so that memory is attributable and a crash becomes a row.
"""
