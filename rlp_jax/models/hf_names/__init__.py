"""Hugging Face tensor names of each model family: pure name/layout maps, no file IO.

tensor_map.py holds the layouts (torch Linear / Conv1d weights ↔ our einsum kernels, fused HF
tensors); qwen3.py (dense family) and nemotron_h.py (hybrid family) list one `TensorMapping` per
HF tensor and translate config.json both ways; config_json.py lays an exported config.json over
the one of the checkpoint a run started from. interop/hf_checkpoint.py reads and writes the files.
"""
