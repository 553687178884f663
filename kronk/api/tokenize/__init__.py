"""Tokenize, detokenize and apply-template: schemas (requests), routes (HTTP), serving (in the replica)."""
