"""Checkpoints, the GPT graph, placement onto channels and banks, code generation, ``.pimbin``."""
