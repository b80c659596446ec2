"""Hugging Face interop and checkpoint loading, above the models: safetensors files ↔ rlp_jax
params (every family whose record has Hugging Face names, models/hf_names/), the
`model.init_from` loader, and the export command line with the run's tokenizer as Hugging Face
files (tokenizer_export.py; sentencepiece models converted by sentencepiece_json.py)."""
