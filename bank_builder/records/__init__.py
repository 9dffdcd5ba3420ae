"""Import benchmark records and join them across models into a query x model matrix.

Sources (one per input path): a directory or a tar archive (.tar, .tar.gz/.tgz, .tar.xz/.txz, .tar.bz2; streamed
member by member, never extracted) holding LLMRouterBench ``results/bench/<dataset>/<split>/<model>/*.json``; a
single such ``.json`` file; or a ``.jsonl`` file, one record per line with keys ``dataset, index, query, model,
response, score`` (required; ``response`` may be null) and optional ``prompt_tokens, completion_tokens, cost,
prompt, prediction, ground_truth, split``. Dataset and model names come from ``dataset_name`` / ``model_name``
(falling back to the path); the split from the path (falling back to ``split``).

Fatal, a RecordError naming the file (plus record position or line number, and the field): an unreadable archive,
a .json/.jsonl that does not parse, a result file without a ``records`` list, a record without an integer
``index``, a non-numeric ``score`` or one outside [0, 1], a non-string text, a negative or non-numeric token
count or cost, no dataset/model name, a duplicate (dataset, index, model) row unless ``keep_latest`` (both
sources named), one dataset read from two splits, an unknown name in the ``datasets``/``models`` filters, and
nothing loaded at all.

Counted in ``ImportReport.skipped`` (reason -> count), shown by ``summary()``: files under results/bench that are
not .json ("not_json"), files outside results/bench ("outside_results_bench"), .json files at the wrong depth
("unexpected_layout"), links/devices in archives ("not_regular_file"), blank JSONL lines ("blank_line"), result
files with no records ("empty_records_file"); records left out on request ("filtered_dataset", "filtered_model",
"max_queries_per_dataset"); and records kept but disagreeing with the first model seen for that query
("query_text_mismatch", "ground_truth_mismatch": the first text is kept).

Kept as given: empty or null responses (response "", score as given); null tokens / cost (None, nan in the
matrix). A model missing some queries is kept and the gaps are masked (present False, score 0, tokens/cost nan).
"""

from bank_builder.records.matrix import RecordMatrix, RecordSelection, load_records, subsample
from bank_builder.records.sources import (
    ImportReport, Record, RecordError, iter_records, jsonl_objects, source_digest,
)

__all__ = ["ImportReport", "Record", "RecordError", "RecordMatrix", "RecordSelection", "iter_records", "jsonl_objects", "load_records",
           "source_digest", "subsample"]
