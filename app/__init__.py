"""JiSi Gateway: an OpenAI-compatible gateway that routes and aggregates LLMs with JiSi."""
