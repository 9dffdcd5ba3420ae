"""Offline tests: the bank tools without a gateway (records import, `jisi-bank collect` against fake upstreams,
the evaluator's parts and a full `jisi-bank evaluate` on the real mini-bench records, the CLI)."""
