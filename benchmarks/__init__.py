"""permerge's performance benchmark: `python -m benchmarks` (see docs/performance.md).

Every workload runs in a fresh Python process (`benchmarks.worker`), so each peak RSS is its
own; the "whole run" comparison times two whole processes (`python -m permerge_core align`
and `benchmarks.plain_forward`). The orchestrator (`__main__`) prints a table and writes a
JSON file, by default benchmarks/results/latest.json.
"""
