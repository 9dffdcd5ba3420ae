"""`jisi-bank`: build, extend, inspect and evaluate embedding banks, and collect records.

Argument parsing only: each command turns its arguments into typed options (RecordSelection,
EmbedderSettings, BankIndexSettings, EvaluateOptions, CalibrateOptions, CollectOptions) and calls the library
with them. Over 300 lines: the options of seven commands, defined once each and shared where they recur.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from app.bank.format import BankError, read_manifest
from app.config import BankIndexSettings, EmbedderSettings, Settings, comma_list
from app.embedding import EmbedderError
from app.engine import JiSiParams
from app.engine.params import parse_param
from bank_builder.evaluate.stats import N_RESAMPLES
from bank_builder.records.latency import parse_latency
from bank_builder.records import RecordSelection

log = logging.getLogger("jisi-bank")


# ---------------------------------------------------------------- options shared by the commands


def _add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", action="append", required=True, metavar="PATH",
                        help="records: a results/bench directory, a .tar.gz/.tar.xz archive, or a .jsonl file (repeatable)")
    parser.add_argument("--datasets", action="append", help="only these datasets (comma-separated, repeatable)")
    parser.add_argument("--models", action="append", help="only these models (comma-separated, repeatable)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="a seeded random subset of at most this many questions per dataset")
    parser.add_argument("--keep-latest", action="store_true",
                        help="on duplicate (dataset, index, model) rows keep the later one instead of failing")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split and subsets (paper: 42)")
    parser.add_argument("--train-ratio", type=float, default=0.7, help="train share per dataset (paper: 0.7)")


def record_selection(args: argparse.Namespace) -> RecordSelection:
    return RecordSelection(paths=tuple(Path(p) for p in args.records), datasets=tuple(comma_list(args.datasets)) or None,
                           models=tuple(comma_list(args.models)) or None, max_queries_per_dataset=args.max_queries,
                           keep_latest=args.keep_latest, seed=args.seed)


def _add_embedder_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("embedder of the queries, and of the responses unless --response-* are "
                                      "given (defaults from settings: $JISI_CONFIG / JISI_EMBEDDER__*)")
    group.add_argument("--embedding-backend", choices=["local", "remote", "static"])
    group.add_argument("--embedding-model", help="model name or path (local, static) or model id (remote)")
    group.add_argument("--embedding-url", help="base URL of an OpenAI-compatible /v1/embeddings server")
    group.add_argument("--device", help="torch device for the local backend, e.g. cpu or cuda")
    group.add_argument("--batch-size", type=int)
    group.add_argument("--max-seq-length", type=int,
                       help="tokens embedded per text (default 256; 0: the backend's own: the model's limit for "
                            "local, every token for static)")
    group.add_argument("--truncation", choices=["head", "head_tail"], help="what of a longer text is embedded")
    group.add_argument("--cache-dir", type=Path, help="embedding cache folder (outside the repository)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    responses = parser.add_argument_group("embedder of the responses (default: settings' response_embedder, "
                                          "else the query embedder)")
    responses.add_argument("--response-backend", choices=["local", "remote", "static"])
    responses.add_argument("--response-model", help="model name or path, or the remote model id")
    responses.add_argument("--response-max-seq-length", type=int,
                           help="the responses' token budget (0: the backend's own)")
    responses.add_argument("--response-truncation", choices=["head", "head_tail"])


def _embedder(base: EmbedderSettings, overrides: dict[str, Any], args: argparse.Namespace) -> EmbedderSettings:
    updated = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if args.cache_dir is not None:
        updated = updated.model_copy(update={"cache_dir": args.cache_dir})
    if args.no_cache:
        updated = updated.model_copy(update={"cache_dir": None})
    return EmbedderSettings.model_validate(updated.model_dump())


def embedder_settings(args: argparse.Namespace) -> EmbedderSettings:
    budget = args.max_seq_length or None  # 0: the backend's own (below)
    settings = _embedder(Settings().embedder, {
        "backend": args.embedding_backend, "model": args.embedding_model, "base_url": args.embedding_url,
        "device": args.device, "batch_size": args.batch_size, "max_seq_length": budget,
        "truncation": args.truncation}, args)
    return _backend_budget(settings, args.max_seq_length)


def response_embedder_settings(args: argparse.Namespace) -> EmbedderSettings | None:
    """The responses' embedder, or None when they share the query embedder."""
    given = {"backend": args.response_backend, "model": args.response_model,
             "max_seq_length": args.response_max_seq_length or None, "truncation": args.response_truncation}
    base = Settings().response_embedder
    if base is None and args.response_max_seq_length is None and all(v is None for v in given.values()):
        return None
    settings = _embedder(base or embedder_settings(args), given, args)
    return _backend_budget(settings, args.response_max_seq_length)


def _backend_budget(settings: EmbedderSettings, given: int | None) -> EmbedderSettings:
    """--*max-seq-length 0: the backend's own budget (EmbedderSettings.max_seq_length None)."""
    return settings.model_copy(update={"max_seq_length": None}) if given == 0 else settings


def _add_replay_options(parser: argparse.ArgumentParser, *, out: str, param: str, split: str) -> None:
    """What evaluate and calibrate share: the records, the embedders, the output folder, prices, fixed
    parameters and the split; the help texts say what each command does with them."""
    _add_record_options(parser)
    _add_embedder_options(parser)
    parser.add_argument("--out", required=True, type=Path, help=out)
    parser.add_argument("--prices", type=Path, help="prices file (e.g. ../shared/data/prices.json) for null costs")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=param)
    parser.add_argument("--split", choices=["given", "random"], default=None, help=split)


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration (bank_builder/evaluate/calibrate.py)")
    group.add_argument("--objective", default="accuracy", metavar="accuracy|cost:ALPHA|savings[:MARGIN]",
                       help="accuracy, cost:ALPHA (cost_weight fixed at ALPHA, the rest chosen for accuracy), or "
                            "savings[:MARGIN] (the economy profile: the cheapest point at best single's fold accuracy "
                            "minus MARGIN points, default 0)")
    group.add_argument("--folds", type=int, default=5, help="cross-validation folds of the train split")
    group.add_argument("--settings", type=int, default=40,
                       help="settings tried: the paper's defaults and a seeded random sample of the search space")


def _add_index_options(parser: argparse.ArgumentParser) -> None:
    defaults = BankIndexSettings()
    group = parser.add_argument_group("search index (see app/bank/index.py)")
    group.add_argument("--index", choices=["auto", "flat", "ivf"], default=defaults.kind,
                       help="flat: exact; ivf: approximate, for large banks; auto: flat up to --index-threshold "
                            f"queries, ivf above (default: {defaults.kind})")
    group.add_argument("--index-threshold", type=int, default=defaults.approximate_above, metavar="N",
                       help=f"auto: the largest bank searched exactly (default: {defaults.approximate_above})")
    group.add_argument("--nlist", type=int, default=defaults.nlist,
                       help="ivf: number of k-means lists (default: 4 x sqrt(bank queries))")


def index_settings(args: argparse.Namespace) -> BankIndexSettings:
    return BankIndexSettings(kind=args.index, approximate_above=args.index_threshold, nlist=args.nlist)


def jisi_params(pairs: list[str]) -> JiSiParams:
    """--param NAME=VALUE overrides over the configured (paper-default) hyperparameters."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param expects NAME=VALUE, got {pair!r}")
        overrides[name.strip()] = parse_param(name.strip(), value)
    return Settings().jisi.params().with_overrides(overrides)


# ---------------------------------------------------------------- commands


def cmd_build(args: argparse.Namespace) -> None:
    from bank_builder.build import build_from_records

    started = time.perf_counter()
    manifest = build_from_records(record_selection(args), embedder_settings(args), args.out, part=args.split,
                                  train_ratio=args.train_ratio, params=Settings().jisi.params(),
                                  index=index_settings(args), response_settings=response_embedder_settings(args))
    print(f"bank {manifest.build_id} written to {args.out}: {manifest.n_queries} queries, "
          f"{len(manifest.models)} models, {manifest.n_records} records, {manifest.index_type} index "
          f"in {time.perf_counter() - started:.1f}s")


def cmd_add_model(args: argparse.Namespace) -> None:
    from app.embedding import make_embedder
    from bank_builder.build import add_models

    matrix = record_selection(args).load(progress=True)
    before = read_manifest(args.bank)
    responses = response_embedder_settings(args)
    manifest = add_models(args.bank, matrix, make_embedder(embedder_settings(args)),
                          response_embedder=make_embedder(responses) if responses is not None else None)
    added = manifest.models[len(before.models):]
    print(f"added {', '.join(added)} to {args.bank}: now {len(manifest.models)} models, "
          f"{manifest.n_records} records (build {manifest.build_id})")


def cmd_info(args: argparse.Namespace) -> None:
    from app.bank.reader import Bank

    bank = Bank.load(args.bank)
    m = bank.manifest
    if args.json:
        print(m.model_dump_json(indent=2))
        return
    size = sum(p.stat().st_size for p in Path(args.bank).iterdir() if p.is_file())
    print(f"bank      {args.bank}  (format {m.format_version}, build {m.build_id}, {m.created_at})")
    print(f"size      {size / 1e6:.1f} MB on disk")
    print(f"queries   {m.n_queries}  " + ", ".join(f"{d}: {n}" for d, n in m.datasets.items()))
    print(f"models    {len(m.models)}  records {m.n_records} "
          f"({100 * m.n_records / max(1, m.n_queries * len(m.models)):.1f}% of the grid present)")
    print(f"embedder  {m.embedder.name} (d={m.embedder.dim}, max_seq_length={m.embedder.max_seq_length})")
    print(f"index     {m.index_type}")
    print(f"split     {json.dumps(m.split)}")
    print(f"params    {json.dumps(m.params)}")
    calibration = m.calibration or {}
    if calibration:  # the named profiles the gateway serves (quality: every virtual model; economy: jisi-economy)
        print(f"quality   {calibration.get('objective')}: {json.dumps(calibration.get('params'))}")
        for name, profile in (calibration.get("profiles") or {}).items():
            print(f"{name:<9} {profile.get('objective')}: {json.dumps(profile.get('params'))}")
    print("sources   " + "\n          ".join(f"{s.path} sha256:{s.sha256[:16]}" for s in m.sources))
    print(f"\n{'model':<40} {'records':>8} {'accuracy':>9} {'mean c':>8}")
    for j, name in enumerate(m.models):
        mask = bank.present[:, j]
        n = int(mask.sum())
        acc = float(bank.v[mask, j].mean()) if n else float("nan")
        tokens = float(bank.c[mask, j].mean()) if n else float("nan")
        print(f"{name:<40} {n:>8} {acc:>9.4f} {tokens:>8.0f}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from bank_builder.evaluate.run import EvaluateOptions, evaluate

    evaluate(EvaluateOptions(records=record_selection(args), out=args.out, embedder=embedder_settings(args),
                             response_embedder=response_embedder_settings(args), params=jisi_params(args.param),
                             split=args.split, train_ratio=args.train_ratio, prices=args.prices,
                             plots=not args.no_plots, resamples=args.resamples, calibrate=args.calibrate,
                             objective=args.objective, folds=args.folds, settings=args.settings,
                             explain=args.explain, decisions=args.decisions,
                             quorum=parse_latency(args.quorum) if args.quorum else None))


def cmd_calibrate(args: argparse.Namespace) -> None:
    from bank_builder.evaluate.calibrate_cli import CalibrateOptions, run_calibration

    run_calibration(CalibrateOptions(records=record_selection(args), out=args.out, embedder=embedder_settings(args),
                                     response_embedder=response_embedder_settings(args), params=jisi_params(args.param),
                                     split=args.split, train_ratio=args.train_ratio, prices=args.prices,
                                     objective=args.objective, folds=args.folds, settings=args.settings,
                                     bank=args.bank, economy=args.economy))


def cmd_collect(args: argparse.Namespace) -> None:
    from bank_builder.collect import CollectOptions, collect, load_questions, scorers, settings_from

    overrides = {}
    for item in args.scorer or []:
        dataset, sep, kind = item.partition("=")
        if not sep or not dataset or not kind:
            raise ValueError(f"--scorer expects DATASET=KIND, got {item!r}")
        scorers.get_scorer(kind)
        overrides[dataset] = kind
    options = CollectOptions(max_tokens=args.max_tokens, temperature=args.temperature, concurrency=args.concurrency,
                             retries=args.retries, split=args.split, scorers=overrides,
                             **({"prompt_template": args.prompt_template} if args.prompt_template else {}))
    settings = settings_from(args.config)
    questions = load_questions(args.questions, datasets=comma_list(args.datasets) or None,
                               max_queries=args.max_queries, seed=args.seed)
    print(f"{len(questions)} questions from {len(args.questions)} source(s)", file=sys.stderr)
    try:
        summary = asyncio.run(collect(questions, settings, comma_list(args.upstreams) or None, args.out,
                                      cache_path=args.cache, options=options, progress=not args.no_progress))
    except KeyboardInterrupt:
        print("interrupted: finished answers are kept in the cache; rerun the same command to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    if args.no_progress:
        print(summary.table())


# ---------------------------------------------------------------- the parser


def _add_collect_parser(sub: argparse._SubParsersAction) -> None:
    co = sub.add_parser("collect", help="ask configured upstreams a question set and write LLMRouterBench records")
    co.add_argument("--questions", action="append", required=True, type=Path, metavar="PATH",
                    help="questions JSONL ({dataset, index, query, ground_truth, kind?} per line) or any records "
                         "source (directory, archive, records .jsonl); repeatable")
    co.add_argument("--out", required=True, type=Path, help="folder receiving results/bench/... files")
    co.add_argument("--config", type=Path, help="settings YAML with the upstreams (default: $JISI_CONFIG)")
    co.add_argument("--upstreams", action="append", help="only these upstreams (comma-separated, repeatable)")
    co.add_argument("--datasets", action="append", help="only these datasets (comma-separated, repeatable)")
    co.add_argument("--max-queries", type=int, help="a seeded random subset of at most N questions per dataset")
    co.add_argument("--seed", type=int, default=42, help="seed of the --max-queries subset (default 42)")
    co.add_argument("--max-tokens", type=int, default=512)
    co.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature (default: each upstream's configured default, else the server's)")
    co.add_argument("--concurrency", type=int, help="in-flight requests per upstream (default: its max_concurrency)")
    co.add_argument("--retries", type=int, default=3, help="retries on connection errors, timeouts, 429 and 5xx")
    co.add_argument("--scorer", action="append", metavar="DATASET=KIND",
                    help="scorer for a dataset: numeric, choice, exact or module:function (repeatable)")
    co.add_argument("--prompt-template", help="prompt with {query} and {instruction} (default: both, blank line)")
    co.add_argument("--split", default="test", help="split name in the written files (default test)")
    co.add_argument("--cache", type=Path, help="answer cache (default: OUT/.collect-cache.jsonl)")
    co.add_argument("--no-progress", action="store_true", help="no progress bar and summary table")
    co.set_defaults(func=cmd_collect)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="jisi-bank", description=__doc__.splitlines()[0])
    root.add_argument("-v", "--verbose", action="store_true")
    sub = root.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build a bank from benchmark records")
    _add_record_options(build)
    _add_embedder_options(build)
    build.add_argument("--out", required=True, type=Path, help="bank folder (replaced atomically)")
    build.add_argument("--split", choices=["all", "train", "test"], default="all",
                       help="which part of the paper's per-dataset split goes into the bank (default: all)")
    _add_index_options(build)
    build.set_defaults(func=cmd_build)

    add = sub.add_parser("add-model", help="add new models' records to a bank without re-embedding the rest")
    add.add_argument("--bank", required=True, type=Path)
    _add_record_options(add)
    _add_embedder_options(add)
    add.set_defaults(func=cmd_add_model)

    info = sub.add_parser("info", help="print what a bank holds")
    info.add_argument("bank", type=Path)
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=cmd_info)

    ev = sub.add_parser("evaluate", help="replay the test split through the engine and compare with baselines")
    _add_replay_options(ev, out="folder for results.json, results.md and plots",
                        param="override a JiSi hyperparameter, e.g. --param k=3 --param t=0.8 (repeatable)",
                        split="given: the records' own train/test split; random: the paper's seeded per-dataset "
                              "split (--train-ratio). Default: given when every dataset has a train and a test split")
    ev.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples for the intervals")
    ev.add_argument("--no-plots", action="store_true")
    ev.add_argument("--calibrate", action="store_true",
                    help="also calibrate on the train split (k-fold CV) and report jisi_route_calibrated, "
                         "jisi_shortcut and the cost_weight frontier")
    ev.add_argument("--decisions", action="store_true",
                    help="decisions.jsonl: one line per test question and JiSi method (candidates, answered_by, "
                         "calls, cost, correct), to compare the gateway's decisions with (bench/parity.py)")
    ev.add_argument("--quorum", metavar="MEDIAN[,SIGMA]",
                    help="model the gateway's fan-out quorum (its resilience settings) against the replay upstream's "
                         "latencies (`jisi-pool replay --latency-ms MEDIAN[,SIGMA]`, the same seed): a candidate "
                         "the quorum would cancel counts as failed on the test split")
    ev.add_argument("--explain", action="store_true",
                    help="explain.md: where jisi_route and best_single disagree, and ablations of the parameters")
    _add_calibration_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    cal = sub.add_parser("calibrate", help="choose the hyperparameters by k-fold cross-validation on the train split")
    _add_replay_options(cal, out="folder for calibration.json and calibration.md",
                        param="fixed parameters the search starts from (repeatable)",
                        split="which records are the train split (as for evaluate); only those are read")
    cal.add_argument("--bank", type=Path, help="write the choice into this bank's manifest (its defaults)")
    cal.add_argument("--no-economy", dest="economy", action="store_false",
                     help="skip the economy profile's search (4-5x the accuracy search's time; the bank then serves "
                          "no jisi-economy)")
    _add_calibration_options(cal)
    cal.set_defaults(func=cmd_calibrate)

    _add_collect_parser(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (BankError, EmbedderError, ValueError, FileNotFoundError) as exc:
        print(f"jisi-bank: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
