"""`jisi-bank collect`: run a question set through the configured upstreams and write LLMRouterBench records.

Questions come from any record source `iter_records` reads (one per (dataset, index): its query and ground truth)
or from a questions JSONL (``{"dataset", "index", "query", "ground_truth", "kind"?}`` per line). Every answer is
appended to a cache (JSONL, fsync'd per line) before anything else, so a killed run loses nothing: the next run
reads it and asks only what is missing. Scores are computed when the result files are written, from the cached
responses, so changing a scorer never needs new calls; costs come from the configured prices.
"""

from bank_builder.collect.questions import CollectOptions, Question, load_questions
from bank_builder.collect.results import CollectSummary, build_documents, write_results
from bank_builder.collect.run import AnswerCache, collect, settings_from

__all__ = ["AnswerCache", "CollectOptions", "CollectSummary", "Question", "build_documents", "collect",
           "load_questions", "settings_from", "write_results"]
