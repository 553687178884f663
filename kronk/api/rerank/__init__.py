"""Rerank: schemas (request), routes (HTTP), serving (in the replica)."""
