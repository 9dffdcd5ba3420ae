"""End-to-end latency of `jisi` against the slowest single upstream on the same prompts, through a running
gateway (e.g. the demo's). Fan-out should cost about the slowest candidate, not the sum of them.

Usage: python bench/fanout_latency.py [--url http://127.0.0.1:8000] [--prompts 6] [--max-tokens 48]
Each prompt goes to every upstream alone (pass-through, one after another), then to jisi-route.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

PROMPTS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have now?",
    "What is the capital of Italy? Answer with one word.",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn",
    "Sara reads 12 pages a day. How many pages does she read in 5 days?",
    "What is the capital of Japan? Answer with one word.",
]


def timed(client: httpx.Client, model: str, prompt: str, max_tokens: int) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
    response.raise_for_status()
    return time.perf_counter() - started, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=600) as client:
        upstreams = [m["id"] for m in client.get("/v1/models").json()["data"] if m["owned_by"] == "upstream"]
        rows = []
        for prompt in PROMPTS[: args.prompts]:
            singles = {m: timed(client, m, prompt, args.max_tokens)[0] for m in upstreams}
            wall, body = timed(client, "jisi-route", prompt, args.max_tokens)
            fanout = [c["latency_ms"] / 1000 for c in body["jisi"]["calls"] if c["role"] == "candidate"]
            rows.append((wall, max(singles.values()), sum(singles.values()), max(fanout),
                         body["jisi"]["timings_ms"]["overhead"] / 1000))
            print(f"jisi-route {wall:6.2f}s | slowest single {max(singles.values()):6.2f}s | "
                  f"sum of singles {sum(singles.values()):6.2f}s | slowest candidate inside jisi {max(fanout):6.2f}s "
                  f"| gateway overhead {rows[-1][4]:5.2f}s | {prompt[:40]!r}")
    mean = [statistics.mean(col) for col in zip(*rows)]
    print(f"\nmean over {len(rows)} prompts: jisi-route {mean[0]:.2f}s, slowest single alone {mean[1]:.2f}s "
          f"(ratio {mean[0] / mean[1]:.2f}), sum of singles {mean[2]:.2f}s (ratio {mean[0] / mean[2]:.2f}), "
          f"gateway overhead {mean[4]:.2f}s")


if __name__ == "__main__":
    main()
