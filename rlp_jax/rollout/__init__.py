"""Thought rollouts: positions, sampling with a KV cache, reasoned evidence."""
