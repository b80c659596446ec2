"""rlp_jax: reinforcement learning as a pretraining objective, in JAX/Flax."""

__version__ = "0.1.0"
