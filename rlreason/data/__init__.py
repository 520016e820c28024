"""Prompts for GRPO: from dataset files or generators to the step's batches.

readers (JSONL / Parquet files with line numbers) -> sources (each named task's rows as `Example`s) ->
examples (the train / eval split of `task.name`) -> encoding (tokenized, checked `PromptSet`, before any
compile; `bad_rows` applies task.on_bad_row) -> pipeline (grain: per-process shard, shuffle, repeat, batch;
resumable). `synthetic` generates the built-in arithmetic and countdown tasks.
"""
