"""AdamW with linear warmup, a constant or cosine schedule, and global-norm gradient clipping."""
from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then constant or cosine decay to the final fraction.

  Evaluated at `count + 1`, so the first optimizer step already moves (lr / warmup_steps) and the
  last of `num_steps` steps lands on the final value.
  """
  warmup = min(opt.warmup_steps, num_steps)
  if opt.schedule == 'constant':
    after = optax.constant_schedule(opt.learning_rate)
  else:
    after = optax.cosine_decay_schedule(
        opt.learning_rate, decay_steps=max(num_steps - warmup, 1), alpha=opt.final_lr_fraction)
  if warmup == 0:
    schedule = after
  else:
    ramp = optax.linear_schedule(0.0, opt.learning_rate, transition_steps=warmup)
    schedule = optax.join_schedules([ramp, after], boundaries=[warmup])
  return lambda count: schedule(count + 1)


def make_optimizer(opt: ml_collections.ConfigDict,
                   num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain the train step applies, and its learning-rate schedule (for logging)."""
  schedule = learning_rate_schedule(opt, num_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm),
      optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay),
  )
  return tx, schedule
