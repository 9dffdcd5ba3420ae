"""The offline evaluator (`jisi-bank evaluate`): split, replay through the engine, baselines, scores, report."""
