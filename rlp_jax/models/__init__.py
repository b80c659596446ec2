"""Decoder model families (dense Qwen3, hybrid Nemotron-H) as pure Flax NNX code; registry.py is
the entry point and family.py the record each family registers (docs/models.md)."""
