"""rlp_jax: reinforcement learning as a pretraining objective, in JAX/Flax.

The public functional API (docs/api.md) is importable from here: `rlp_jax.load_model`,
`rlp_jax.sample_thoughts`, `rlp_jax.information_gain`, `rlp_jax.make_train_step`, ... It lives in
rlp_jax/api.py and is imported on first use, so `import rlp_jax.config` (or the command lines)
does not pay for JAX models it does not need.
"""

__version__ = "0.1.0"

API = ('ModelDef', 'LoadedModel', 'SampledThoughts', 'Gains', 'load_config', 'load_model',
       'documents', 'encode', 'decode', 'document_batch', 'next_token_log_probs',
       'sample_thoughts', 'information_gain', 'rlp_rollout', 'rlp_loss', 'init_state',
       'make_train_step', 'batch_size')
__all__ = list(API)


def __getattr__(name: str):
  if name in API:
    from rlp_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(API))
