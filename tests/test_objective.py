"""The objective functions against slow float64 numpy references written with plain loops."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.errors import ConfigError
from rlp_jax.objective import (
    ADVANTAGE_ESTIMATORS,
    clipped_surrogate,
    get_advantage_estimator,
    group_advantage,
    information_gain,
    kl_to_teacher,
    leave_one_out_advantage,
    next_token_loss,
    rlp_total_loss,
    token_log_probs,
)

RTOL, ATOL = 1e-5, 1e-6
EPS_LOW, EPS_HIGH = 0.2, 0.28


def maybe_jit(fn, use_jit: bool):
  return jax.jit(fn) if use_jit else fn


def f64(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------- references


def ref_log_softmax_at(row, target: int, temperature: float) -> float:
  """log softmax(row / temperature)[target] with a plain loop (max-shifted)."""
  scaled = [float(v) / temperature for v in row]
  top = max(scaled)
  total = 0.0
  for v in scaled:
    total += math.exp(v - top)
  return scaled[target] - top - math.log(total)


def ref_token_log_probs(logits, targets, temperature):
  logits, targets = f64(logits), np.asarray(targets)
  out = np.zeros(targets.shape)
  for idx in np.ndindex(*targets.shape):
    out[idx] = ref_log_softmax_at(logits[idx], int(targets[idx]), temperature)
  return out


def ref_next_token_loss(logits, tokens, mask):
  logits = f64(logits)
  b_size, length, _ = logits.shape
  total, count = 0.0, 0
  for b in range(b_size):
    for t in range(length - 1):
      if mask[b, t] and mask[b, t + 1]:
        total -= ref_log_softmax_at(logits[b, t], int(tokens[b, t + 1]), 1.0)
        count += 1
  return (total / count if count else 0.0), count


def ref_group_advantage(rewards):
  """Leave-one-out baseline, written from its definition."""
  rewards = f64(rewards)
  g = rewards.shape[-1]
  out = np.zeros_like(rewards)
  for idx in np.ndindex(*rewards.shape[:-1]):
    for i in range(g):
      others = [rewards[idx + (j,)] for j in range(g) if j != i]
      out[idx + (i,)] = rewards[idx + (i,)] - sum(others) / len(others)
  return out


def ref_surrogate(logp_new, logp_old, adv, mask, eps_low, eps_high, log_ratio_clip=20.0):
  logp_new, logp_old, adv = f64(logp_new), f64(logp_old), f64(adv)
  n, t_max = mask.shape
  loss = 0.0
  tokens, clipped_count, kl_sum, ratio_sum, ratio_max = 0, 0, 0.0, 0.0, 0.0
  for i in range(n):
    length = int(mask[i].sum())
    thought = 0.0
    for u in range(t_max):
      if not mask[i, u]:
        continue
      lr = min(max(logp_new[i, u] - logp_old[i, u], -log_ratio_clip), log_ratio_clip)
      rho = math.exp(lr)
      unclipped = rho * adv[i]
      clipped = min(max(rho, 1.0 - eps_low), 1.0 + eps_high) * adv[i]
      thought += min(unclipped, clipped)
      tokens += 1
      clipped_count += clipped < unclipped
      kl_sum += (rho - 1.0) - lr
      ratio_sum += rho
      ratio_max = max(ratio_max, rho)
    if length:
      loss -= thought / length
  metrics = {
      "clip_fraction": clipped_count / tokens if tokens else 0.0,
      "approx_kl": kl_sum / tokens if tokens else 0.0,
      "ratio_mean": ratio_sum / tokens if tokens else 0.0,
      "ratio_max": ratio_max,
  }
  return loss / n, metrics


def ref_kl(logp_theta, logp_teacher, mask):
  logp_theta, logp_teacher = f64(logp_theta), f64(logp_teacher)
  n, t_max = mask.shape
  total = 0.0
  for i in range(n):
    length = int(mask[i].sum())
    s = 0.0
    for u in range(t_max):
      if mask[i, u]:
        d = logp_teacher[i, u] - logp_theta[i, u]
        s += math.exp(d) - d - 1.0
    if length:
      total += s / length
  return total / n


# ----------------------------------------------------------------------------- inputs


def thought_mask(lengths, t_max: int) -> np.ndarray:
  """Prefix masks: each thought ends after `length` tokens (trailing False)."""
  return np.arange(t_max)[None, :] < np.asarray(lengths)[:, None]


# Full (T), length 1, ended early, empty, and random lengths.
T_MAX = 7
LENGTHS = [T_MAX, 1, 3, 0, T_MAX, 5, 1, 2, T_MAX, 4]


def surrogate_inputs(seed: int):
  """Random thoughts whose ratios fall inside and outside the clip band, both advantage signs."""
  rng = np.random.default_rng(seed)
  n = len(LENGTHS)
  mask = thought_mask(LENGTHS, T_MAX)
  logp_old = -rng.exponential(2.0, size=(n, T_MAX))
  # Log-ratios: small (inside the band), moderate (outside it), beyond ±log_ratio_clip.
  delta = rng.normal(0.0, 0.4, size=(n, T_MAX))
  delta[0, :3] = [0.05, -0.5, 0.6]
  delta[4, :3] = [25.0, -30.0, 0.01]
  logp_new = logp_old + delta
  adv = rng.normal(0.0, 1.0, size=n)
  adv[0], adv[4], adv[8] = 1.3, -0.7, 0.0
  # Garbage in the padding must not leak.
  logp_new = np.where(mask, logp_new, 1e4)
  logp_old = np.where(mask, logp_old, -1e4)
  as32 = lambda x: np.asarray(x, np.float32)
  return as32(logp_new), as32(logp_old), as32(adv), mask


# ----------------------------------------------------------------------------- token_log_probs


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_token_log_probs_matches_numpy(temperature, use_jit):
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 3.0, size=(2, 3, 5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(2, 3, 5)).astype(np.int32)
  fn = maybe_jit(functools.partial(token_log_probs, temperature=temperature), use_jit)
  got = fn(logits, targets)
  assert got.dtype == jnp.float32 and got.shape == targets.shape
  np.testing.assert_allclose(got, ref_token_log_probs(logits, targets, temperature),
                             rtol=RTOL, atol=ATOL)


def test_token_log_probs_bf16_logits_compute_in_fp32():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(0.0, 3.0, size=(4, 9)), jnp.bfloat16)
  targets = np.asarray(rng.integers(0, 9, size=(4,)), np.int32)
  got = jax.jit(token_log_probs)(logits, targets)
  assert got.dtype == jnp.float32
  ref = ref_token_log_probs(np.asarray(logits.astype(jnp.float32)), targets, 1.0)
  np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def test_token_log_probs_rejects_bad_temperature():
  with pytest.raises(ValueError, match="temperature"):
    token_log_probs(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), temperature=0.0)


# ----------------------------------------------------------------------------- next_token_loss


@pytest.mark.parametrize("use_jit", [False, True])
def test_next_token_loss_matches_numpy_with_padding(use_jit):
  rng = np.random.default_rng(2)
  b, length, vocab = 4, 9, 13
  logits = rng.normal(0.0, 2.0, size=(b, length, vocab)).astype(np.float32)
  tokens = rng.integers(0, vocab, size=(b, length)).astype(np.int32)
  mask = np.ones((b, length), bool)
  mask[1, 6:] = False  # right padding
  mask[2, :3] = False  # left padding
  mask[3, 1:] = False  # a single real token: nothing to predict
  loss, count = maybe_jit(next_token_loss, use_jit)(logits, tokens, mask)
  ref_loss, ref_count = ref_next_token_loss(logits, tokens, mask)
  assert int(count) == ref_count == 8 + 5 + 5 + 0
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)


def test_next_token_loss_is_zero_safe():
  logits = jnp.ones((2, 5, 7))
  tokens = jnp.zeros((2, 5), jnp.int32)
  mask = jnp.zeros((2, 5), bool)
  fn = jax.jit(lambda lg: next_token_loss(lg, tokens, mask))
  loss, count = fn(logits)
  grad = jax.grad(lambda lg: fn(lg)[0])(logits)
  assert float(loss) == 0.0 and int(count) == 0
  assert np.all(np.asarray(grad) == 0.0)


# ----------------------------------------------------------------------------- reward, advantage


def test_information_gain_is_the_difference():
  rng = np.random.default_rng(3)
  s_pred = rng.normal(-3.0, 1.0, size=(2, 3, 4)).astype(np.float32)
  s_ema = rng.normal(-3.0, 1.0, size=(2, 3, 1)).astype(np.float32)
  got = jax.jit(information_gain)(s_pred, s_ema)
  ref = np.zeros(s_pred.shape)
  for idx in np.ndindex(*s_pred.shape):
    ref[idx] = float(s_pred[idx]) - float(s_ema[idx[:-1] + (0,)])
  np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
  g_pred, g_ema = jax.grad(lambda p, e: jnp.sum(information_gain(p, e) ** 2),
                           argnums=(0, 1))(s_pred, s_ema)
  assert np.all(np.asarray(g_pred) == 0.0) and np.all(np.asarray(g_ema) == 0.0)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("group_size", [2, 16])
def test_group_advantage_matches_numpy(group_size, use_jit):
  rng = np.random.default_rng(group_size)
  rewards = rng.normal(0.0, 1.5, size=(3, 4, group_size)).astype(np.float32)
  got = maybe_jit(group_advantage, use_jit)(rewards)
  assert got.shape == rewards.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_group_advantage(rewards), rtol=RTOL, atol=ATOL)
  # The formula as written in the design: G/(G−1) · (r − mean r).
  r = f64(rewards)
  direct = group_size / (group_size - 1) * (r - r.mean(-1, keepdims=True))
  np.testing.assert_allclose(got, direct, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(got).sum(-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("group_size", [2, 16])
def test_group_advantage_equals_leave_one_out(group_size):
  rng = np.random.default_rng(10 + group_size)
  rewards = rng.normal(0.0, 1.0, size=(5, group_size)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(group_advantage)(rewards),
                             jax.jit(leave_one_out_advantage)(rewards), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("name", ["group", "leave_one_out"])
def test_group_size_one_raises(name, use_jit):
  fn = maybe_jit(get_advantage_estimator(name), use_jit)
  with pytest.raises(ValueError, match="at least 2"):
    fn(jnp.zeros((3, 1)))


def test_advantage_registry():
  assert set(ADVANTAGE_ESTIMATORS) == {"group", "leave_one_out", "group_std", "batch_std"}
  assert get_advantage_estimator("group") is group_advantage
  assert get_advantage_estimator("leave_one_out") is leave_one_out_advantage
  with pytest.raises(ConfigError, match="rlp.advantage_estimator.*'grpo'"):
    get_advantage_estimator("grpo")


# ----------------------------------------------------------------------------- clipped_surrogate


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_surrogate_matches_numpy(seed, use_jit):
  logp_new, logp_old, adv, mask = surrogate_inputs(seed)
  fn = maybe_jit(functools.partial(clipped_surrogate, epsilon_low=EPS_LOW,
                                   epsilon_high=EPS_HIGH), use_jit)
  loss, metrics = fn(logp_new, logp_old, adv, mask)
  ref_loss, ref_metrics = ref_surrogate(logp_new, logp_old, adv, mask, EPS_LOW, EPS_HIGH)
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)
  assert set(metrics) == set(ref_metrics)
  for key, value in ref_metrics.items():
    assert metrics[key].dtype == jnp.float32, key
    np.testing.assert_allclose(metrics[key], value, rtol=RTOL, atol=ATOL, err_msg=key)
  # The inputs cover what they claim: some tokens clipped, some not, ratios hit ±20.
  assert 0.0 < float(metrics["clip_fraction"]) < 1.0
  np.testing.assert_allclose(metrics["ratio_max"], math.exp(20.0), rtol=RTOL)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clip_fraction_follows_the_advantage_sign(sign):
  # One thought of four tokens: ratios 0.5 (below 1−ε_low), 0.9, 1.1 (inside), 2.0 (above 1+ε_high).
  ratios = np.array([[0.5, 0.9, 1.1, 2.0]])
  logp_old = np.full((1, 4), -2.0, np.float32)
  logp_new = (logp_old + np.log(ratios)).astype(np.float32)
  mask = np.ones((1, 4), bool)
  adv = np.array([sign], np.float32)
  loss, metrics = jax.jit(functools.partial(
      clipped_surrogate, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH))(logp_new, logp_old, adv, mask)
  # A > 0: only ρ = 2.0 binds; A < 0: only ρ = 0.5 binds.
  np.testing.assert_allclose(metrics["clip_fraction"], 0.25, rtol=RTOL)
  if sign > 0:
    expected = -(0.5 + 0.9 + 1.1 + (1 + EPS_HIGH)) / 4
  else:
    expected = -(-(1 - EPS_LOW) - 0.9 - 1.1 - 2.0) / 4
  np.testing.assert_allclose(loss, expected, rtol=RTOL, atol=ATOL)


def test_clipped_surrogate_first_update():
  """logp_new == logp_old: ρ = 1, nothing clipped, KL 0, grad = −A_i/|c_i|/N per token."""
  _, logp_old, adv, mask = surrogate_inputs(4)
  fn = jax.jit(functools.partial(clipped_surrogate, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH))
  loss, metrics = fn(logp_old, logp_old, adv, mask)
  assert float(metrics["clip_fraction"]) == 0.0
  assert float(metrics["approx_kl"]) == 0.0
  assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["ratio_max"]) == 1.0

  n, t_max = mask.shape
  ref_grad = np.zeros((n, t_max))
  ref_loss = 0.0
  for i in range(n):
    length = int(mask[i].sum())
    for u in range(t_max):
      if mask[i, u]:
        ref_grad[i, u] = -float(adv[i]) / length / n
        ref_loss -= float(adv[i]) / length / n
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)
  grad = jax.jit(jax.grad(lambda lp: fn(lp, logp_old, adv, mask)[0]))(logp_old)
  np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=ATOL)
  assert np.all(np.asarray(grad)[~mask] == 0.0)


def test_clipped_surrogate_no_gradient_into_old_logp_or_advantages():
  logp_new, logp_old, adv, mask = surrogate_inputs(5)

  def loss(new, old, a):
    return clipped_surrogate(new, old, a, mask, EPS_LOW, EPS_HIGH)[0]

  g_new, g_old, g_adv = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(logp_new, logp_old, adv)
  assert np.any(np.asarray(g_new) != 0.0)
  assert np.all(np.asarray(g_old) == 0.0)
  assert np.all(np.asarray(g_adv) == 0.0)
  assert np.all(np.isfinite(np.asarray(g_new)))


def test_no_gradient_through_the_reward():
  """S_pred, S_ema → information_gain → group_advantage → surrogate: zero gradient upstream."""
  rng = np.random.default_rng(6)
  group_size = 4
  n = group_size * 3
  mask = thought_mask([T_MAX, 1, 3, 0] * 3, T_MAX)
  logp_old = np.asarray(-rng.exponential(2.0, size=(n, T_MAX)), np.float32)
  logp_new = np.asarray(logp_old + rng.normal(0.0, 0.3, size=(n, T_MAX)), np.float32)
  s_pred = np.asarray(rng.normal(-3.0, 1.0, size=(3, group_size)), np.float32)
  s_ema = np.asarray(rng.normal(-3.0, 1.0, size=(3, 1)), np.float32)

  def loss(s_pred, s_ema, new):
    total = 0.0
    for name in ("group", "leave_one_out"):
      adv = get_advantage_estimator(name)(information_gain(s_pred, s_ema)).reshape(n)
      total += clipped_surrogate(new, logp_old, adv, mask, EPS_LOW, EPS_HIGH)[0]
    return total

  g_pred, g_ema, g_new = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(s_pred, s_ema, logp_new)
  assert np.all(np.asarray(g_pred) == 0.0)
  assert np.all(np.asarray(g_ema) == 0.0)
  assert np.any(np.asarray(g_new) != 0.0)
  rewards = f64(s_pred) - f64(s_ema)
  g_rewards = jax.grad(lambda r: jnp.sum(group_advantage(r) ** 2))(rewards.astype(np.float32))
  assert np.all(np.asarray(g_rewards) == 0.0)


def test_clipped_surrogate_all_empty_is_zero_safe():
  mask = np.zeros((3, 4), bool)
  logp = jnp.full((3, 4), jnp.nan)  # padding may hold anything, even NaN
  fn = jax.jit(functools.partial(clipped_surrogate, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH))
  loss, metrics = fn(logp, logp, jnp.ones(3), mask)
  assert float(loss) == 0.0
  assert all(float(v) == 0.0 for v in metrics.values())
  grad = jax.grad(lambda lp: fn(lp, logp, jnp.ones(3), mask)[0])(logp)
  assert np.all(np.asarray(grad) == 0.0)


def test_clipped_surrogate_rejects_bad_epsilons():
  args = (jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), jnp.ones((1, 2), bool))
  with pytest.raises(ValueError, match="epsilon_low"):
    clipped_surrogate(*args, epsilon_low=1.0, epsilon_high=0.2)
  with pytest.raises(ValueError, match="epsilon_high"):
    clipped_surrogate(*args, epsilon_low=0.2, epsilon_high=-0.1)


# ----------------------------------------------------------------------------- kl_to_teacher


@pytest.mark.parametrize("use_jit", [False, True])
def test_kl_to_teacher_matches_numpy(use_jit):
  rng = np.random.default_rng(7)
  mask = thought_mask(LENGTHS, T_MAX)
  n = len(LENGTHS)
  logp_theta = -rng.exponential(2.0, size=(n, T_MAX))
  logp_teacher = logp_theta + rng.normal(0.0, 0.8, size=(n, T_MAX))
  logp_theta = np.where(mask, logp_theta, 1e4).astype(np.float32)
  logp_teacher = np.where(mask, logp_teacher, -1e4).astype(np.float32)
  fn = maybe_jit(kl_to_teacher, use_jit)
  got = fn(logp_theta, logp_teacher, mask)
  np.testing.assert_allclose(got, ref_kl(logp_theta, logp_teacher, mask), rtol=RTOL, atol=ATOL)
  assert float(got) > 0.0

  g_theta, g_teacher = jax.jit(jax.grad(kl_to_teacher, argnums=(0, 1)))(
      logp_theta, logp_teacher, mask)
  assert np.all(np.asarray(g_teacher) == 0.0)
  ref_grad = np.zeros((n, T_MAX))
  for i in range(n):
    length = int(mask[i].sum())
    for u in range(T_MAX):
      if mask[i, u]:
        d = float(logp_teacher[i, u]) - float(logp_theta[i, u])
        ref_grad[i, u] = (1.0 - math.exp(d)) / length / n
  np.testing.assert_allclose(g_theta, ref_grad, rtol=RTOL, atol=ATOL)


def test_kl_to_teacher_is_zero_when_equal():
  rng = np.random.default_rng(8)
  logp = np.asarray(-rng.exponential(2.0, size=(4, 5)), np.float32)
  mask = thought_mask([5, 1, 0, 3], 5)
  assert float(jax.jit(kl_to_teacher)(logp, logp, mask)) == 0.0
  assert float(kl_to_teacher(logp, logp, np.zeros_like(mask))) == 0.0


# ----------------------------------------------------------------------------- total


def test_rlp_total_loss():
  fn = jax.jit(rlp_total_loss, static_argnums=(3, 4))
  np.testing.assert_allclose(fn(1.5, 2.0, 0.25, 0.5, 4.0), 1.5 + 0.5 * 2.0 + 4.0 * 0.25,
                             rtol=RTOL)
  assert float(fn(1.5, 2.0, 0.25, 0.0, 0.0)) == 1.5  # the paper's setting
  grads = jax.grad(rlp_total_loss, argnums=(0, 1, 2))(1.5, 2.0, 0.25, 0.5, 4.0)
  np.testing.assert_allclose(grads, (1.0, 0.5, 4.0), rtol=RTOL)
