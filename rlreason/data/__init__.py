"""Prompt sources (synthetic tasks, dataset files) and the grain pipeline that batches them."""
