"""Training FLOPs as the RLP paper counts them: ≈ 2N per token of forward pass and ≈ 6N per token
trained with gradient, N the non-embedding parameters (input embedding and output head excluded).

One RLP step (train/rlp_step.py, either prefix strategy) on a batch with D real document tokens, R rollout rows
(B·K·G, scored positions × G) and S sampled thought tokens (the sampled `</think>` included):
  forward   teacher pass over the documents             D
            θ_old document pass                           D
            decoding (`<think>` prefill + each token)     S + R
            S_pred (`<think> c </think>` teacher-forced)  S + 2R
  gradient  each of the U updates: documents + thoughts   U · (D + S + 2R)
  flops = 2N · (2D + 2S + 3R) + 6N · U · (D + S + 2R)
One next-token step: 6N · D. Sequence-length terms of attention are left out (as in the paper).
"""
from __future__ import annotations

from typing import Any

from rlp_jax.models import registry


def non_embedding_params(model_config: Any) -> int:
  """N: all parameters except the input embedding and (untied) output head."""
  vocab_params = model_config.vocab_size * model_config.hidden_size
  heads = 1 if model_config.tie_embeddings else 2
  return registry.count_params(model_config) - heads * vocab_params


def next_token_step_flops(n: int, document_tokens: float) -> float:
  return 6.0 * n * document_tokens


def rlp_step_flops(n: int, document_tokens: float, thought_tokens: float, rollout_rows: float,
                   updates: int) -> float:
  forward = 2 * document_tokens + 2 * thought_tokens + 3 * rollout_rows
  trained = updates * (document_tokens + thought_tokens + 2 * rollout_rows)
  return 2.0 * n * forward + 6.0 * n * trained
