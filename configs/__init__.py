"""The shipped configs: `python -m rlp_jax.main --config=configs/NAME.py`, or in Python
`rlp_jax.load_config('NAME')` / `from rlp_jax.configs import NAME` (installed as rlp_jax.configs)."""
