"""Unit tests: one piece at a time, pure where the piece is (engine/, upstream/ policies, pipeline/ helpers),
with real sockets or the real embedding model only where the piece is about them (upstream/ transport,
embedding/, bank/)."""
