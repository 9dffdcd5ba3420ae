"""The local pool of real llama.cpp upstreams behind `jisi-pool` (tests, the demo)."""
