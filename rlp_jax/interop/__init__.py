"""Hugging Face interop: safetensors checkpoints ↔ rlp_jax params (Qwen3, Nemotron-H), and the
`model.init_from` loader."""
