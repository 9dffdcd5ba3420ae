"""The wire schemas: what both APIs share (common), chat completions (chat), the Responses API
(responses). Pydantic models only; the translation between the two lives in app/serving/responses.py."""
