"""One set of defaults (issue 19): what `jisi-bank build` records with no embedder flags is what a gateway with
no embedder settings expects, backend by backend; a bank built with other embedders (the old default's, say) is
refused at start-up in one line that says how to rebuild it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.bank.format import BankError, EmbedderInfo
from app.config import Settings
from app.embedding import embedder_name, make_embedder
from bank_builder import cli


@pytest.fixture
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from the code's defaults alone (no config/gateway.yaml), as on a machine without one."""
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    monkeypatch.setenv("JISI_CONFIG", str(config))
    return config


def built_with(flags: list[str]) -> tuple[EmbedderInfo, EmbedderInfo]:
    """The embedders `jisi-bank build FLAGS` records for the queries and the responses."""
    args = cli.parser().parse_args(["build", "--records", "x", "--out", "y", "--no-cache", *flags])
    queries = make_embedder(cli.embedder_settings(args))
    responses_settings = cli.response_embedder_settings(args)
    responses = make_embedder(responses_settings) if responses_settings is not None else queries
    return EmbedderInfo.of(queries), EmbedderInfo.of(responses)


def served_with(settings: dict) -> tuple[EmbedderInfo, EmbedderInfo]:
    """The embedders a gateway with these settings compares a bank's manifest with (as create_app builds them)."""
    s = Settings(**settings)
    queries = make_embedder(s.embedder, use_cache=False)
    responses = make_embedder(s.response_embedder, use_cache=False) if s.response_embedder else queries
    assert embedder_name(s.embedder) == queries.name  # what preflight() expects before loading a model
    return EmbedderInfo.of(queries), EmbedderInfo.of(responses)


@pytest.mark.parametrize("flags, gateway", [
    ([], {}),
    (["--embedding-backend", "static"], {"embedder": {"backend": "static"}}),
    (["--embedding-backend", "static", "--response-backend", "static"], {"embedder": {"backend": "static"}}),
    (["--embedding-backend", "local"], {"embedder": {"backend": "local"}}),
    (["--embedding-backend", "local", "--response-backend", "static"],
     {"embedder": {"backend": "local"}, "response_embedder": {"backend": "static"}}),
    (["--embedding-backend", "static", "--max-seq-length", "0"],
     {"embedder": {"backend": "static", "max_seq_length": None}}),
], ids=["defaults", "static", "static-both", "local", "local-static-responses", "static-every-token"])
def test_a_bank_built_with_these_flags_is_what_the_gateway_expects(no_config_file, flags, gateway):
    (bank_q, bank_r), (served_q, served_r) = built_with(flags), served_with(gateway)
    assert bank_q.differences(served_q) == [] and bank_r.differences(served_r) == []


def test_the_default_embedder_is_the_static_model(no_config_file):
    settings = Settings()
    assert settings.embedder.backend == "static" and settings.response_embedder is None
    assert embedder_name(settings.embedder) == "static:all-MiniLM-L6-v2[pca=256]"
    shipped = yaml.safe_load(Path("config/gateway.yaml").read_text())["embedder"]
    assert shipped.get("backend", "static") == "static"  # the shipped config file says the same


def test_a_bank_of_the_old_default_is_refused_in_one_line_that_says_how_to_rebuild_it(
        no_config_file, mini_bank, monkeypatch, capsys):
    from app.http.app import preflight, run

    settings = Settings(bank_path=mini_bank)  # the default embedder; the bank embedded with MiniLM
    with pytest.raises(BankError) as refused:
        preflight(settings)
    message = str(refused.value)
    assert "\n" not in message and f"the bank at {mini_bank} embedded its queries with all-MiniLM-L6-v2" in message
    assert "jisi-bank build --records " in message and f"--out {mini_bank}" in message
    assert "`embedder.backend: local`" in message and "the default" in message
    preflight(Settings(bank_path=mini_bank, embedder={"backend": "local"}))  # served as it was built: accepted

    config = no_config_file.parent / "gateway.yaml"
    config.write_text(yaml.safe_dump({"bank_path": str(mini_bank)}))
    monkeypatch.setenv("JISI_CONFIG", str(config))
    with pytest.raises(SystemExit) as exited:
        run(["--log-format", "text"])
    assert str(exited.value).startswith("jisi-gateway: the bank at") and "\n" not in str(exited.value)


def test_a_static_bank_of_another_distillation_is_refused_in_one_line(no_config_file, mini_bench, static_embedder,
                                                                      tmp_path):
    import json

    from app.engine import JiSiParams
    from app.http.app import preflight
    from bank_builder.build import build_bank
    from bank_builder.records import load_records

    bank = tmp_path / "bank"
    build_bank(load_records([mini_bench], max_queries_per_dataset=5, seed=42), static_embedder, bank,
               params=JiSiParams(), split={"part": "all"}, progress=False)
    preflight(Settings(bank_path=bank))  # the default: the same static model
    manifest = json.loads((bank / "manifest.json").read_text())
    manifest["embedder"]["digest"] = "0123456789abcdef"  # as an older recipe's distillation would record
    (bank / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankError) as refused:
        preflight(Settings(bank_path=bank))
    message = str(refused.value)
    assert "\n" not in message and "digest 0123456789abcdef" in message and static_embedder.digest in message
    assert f"jisi-bank build --records {mini_bench} --out {bank}" in message
