"""Issue 18: the replay meets a missing record as the gateway meets the replay upstream's 404 — the call fails,
the model drops out of the fan-out and is never called again for the question — and a model without a record in
the support set is not eligible (the engine's rule, both paths)."""

from __future__ import annotations

import numpy as np

from app.engine import JiSiParams
from bank_builder.evaluate.folds import path_calls
from bank_builder.evaluate.replay import MemoryBank, Queries, replay_queries

M, N, D = 4, 40, 8


def setup(test_present: np.ndarray, bank_present: np.ndarray | None = None) -> tuple[MemoryBank, Queries]:
    rng = np.random.default_rng(1)
    e = rng.normal(size=(N + len(test_present), D)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    v = np.tile(np.array([0.9, 0.8, 0.7, 0.1], np.float32), (N, 1))  # model 0 best, then 1, 2; 3 weak
    present = np.ones((N, M), bool) if bank_present is None else bank_present
    r = [rng.normal(size=(N + len(test_present), D)).astype(np.float32) for _ in range(M)]
    bank = MemoryBank([f"m{j}" for j in range(M)], e[:N], v * present, present, np.full((N, M), 50.0, np.float32),
                      [x[:N] for x in r])
    nq = len(test_present)
    queries = Queries(e=e[N:], r=[x[N:] for x in r], c=np.full((nq, M), 50.0), present=test_present,
                      empty=np.zeros((nq, M), bool), prompt_tokens=np.full(nq, 10.0))
    return bank, queries


def test_a_candidate_without_a_record_fails_and_is_never_chosen_or_counted() -> None:
    present = np.array([[False, True, True, True], [True, True, True, True]])
    bank, queries = setup(present)
    run = replay_queries(bank, queries, JiSiParams(k=3, n_base=10), with_confidence=True)
    assert run.candidates[0].tolist() == [0, 1, 2]  # online the gateway does not know m0 has no record: it calls it
    assert run.route_choice[0] in (1, 2) and run.cut[0].tolist() == [0]
    choice, called, _ = path_calls(run, None)
    assert 0 not in called[0].tolist() and 0 in called[1].tolist()  # a failed call books no answer and no usage
    # the shortcut goes to the next candidate, as online
    assert run.shortcut_calls[0].tolist() == [1] and run.shortcut_choice[0] == 1


def test_every_call_failing_is_a_failed_request_scored_wrong() -> None:
    present = np.array([[False, False, False, True]])
    bank, queries = setup(present)
    run = replay_queries(bank, queries, JiSiParams(k=3, n_base=10))
    assert run.route_choice[0] == -1 and run.shortcut_choice[0] == -1
    choice, called, _ = path_calls(run, None)
    assert choice[0] == -1 and called[0].size == 0


def test_a_model_without_records_in_the_support_set_is_not_a_candidate_even_with_a_prior() -> None:
    bank_present = np.ones((N, M), bool)
    bank_present[2:, 0] = False  # m0 answered only rows 0 and 1, which are far from the query
    bank, queries = setup(np.ones((1, M), bool), bank_present)
    query = bank.index.reconstruct(10)
    bank.index.reset()
    e = np.stack([query + 0.01 * i for i in range(N)]).astype(np.float32)
    e[:2] = -query  # anti-similar: never in the support set
    bank.index.add(e / np.linalg.norm(e, axis=1, keepdims=True))
    queries = Queries(e=query[None, :], r=queries.r, c=queries.c, present=queries.present, empty=queries.empty,
                      prompt_tokens=queries.prompt_tokens)
    bank.mu[0] = 1.0  # its bank-wide accuracy, all a prior would go on
    with_prior = JiSiParams(k=2, n_base=5, gamma=1.0, lam=100.0)
    run = replay_queries(bank, queries, with_prior)
    assert 0 not in run.candidates[0].tolist() and run.route_choice[0] != 0
    bank_present[:, 0] = True  # with records there, it leads
    bank.present[:, 0] = True
    assert replay_queries(bank, queries, with_prior).candidates[0][0] == 0
