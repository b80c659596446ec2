"""Evaluation: benchmark and held-out corpus problems, answer extraction and exact-match scoring.

Submodules are imported on use (`rlp_jax.eval.answers`, `rlp_jax.eval.benchmarks`); importing this
package loads nothing heavy.
"""
