"""Offline tools that turn benchmark records into a JiSi bank and replay test queries against it."""
