"""prunescope: exact structure analysis of pruned LLM checkpoints, read from their files."""

__version__ = "0.1.1"
