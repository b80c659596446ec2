"""The fp32 margins behind tests/test_chunked_log_probs.py's fixed CHUNKED_REL: every case of that
file, chunked and unchunked, in fp32 and in float64 on the same inputs; per case the worst leaf
(max |a − b| / max |b|) of

  chunked vs unchunked fp32   what the tests bound by CHUNKED_REL (1e-5)
  unchunked fp32 vs float64   the reference path's own fp32 error
  chunked fp32 vs float64     the chunked path's
  float64 chunked vs unchunked  exactness (float64 rounding only)

Run once per CPU code path (the test's docstring quotes the largest):
  python tests/scripts/chunked_log_probs_margins.py
  XLA_FLAGS=--xla_cpu_enable_fast_math=false python tests/scripts/chunked_log_probs_margins.py
  XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 python tests/scripts/chunked_log_probs_margins.py

Measured with jax 0.10.2 on the 2-core development CPU, the worst leaf over the three flag
settings (the default and fast_math=false gave identical numbers):

  case              chunked vs unchunked   unchunked vs f64   chunked vs f64   f64 exactness
  log_probs tied          4.2e-07              3.0e-07           3.0e-07          7.3e-16
  log_probs untied        1.0e-06              4.0e-07           1.0e-06          7.2e-16
  next_token              6.6e-07              3.2e-07           5.6e-07          6.1e-16
  teacher                 2.8e-07              7.7e-07           8.1e-07          3.9e-16
  update                  5.8e-07              2.3e-06           2.3e-06          1.1e-15
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# pylint: disable=wrong-import-position
from tests import test_chunked_log_probs as cases  # noqa: E402

CASES = {
    'log_probs tied': lambda: cases.log_probs_case(tied=True),
    'log_probs untied': lambda: cases.log_probs_case(tied=False),
    'next_token': cases.next_token_case,
    'teacher': cases.teacher_case,
    'update': cases.update_case,
}


def main() -> None:
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"{'case':<18}{'chunked vs unchunked':>22}{'unchunked vs f64':>18}{'chunked vs f64':>16}"
        f"{'f64 exactness':>15}")
  for name, make in CASES.items():
    case = make()
    chunked32, plain32 = cases.run_both(case)
    chunked64, plain64 = cases.run_both(case, float64=True)
    worst = [max(cases.leaf_errors(a, b)) for a, b in ((chunked32, plain32), (plain32, plain64),
                                                       (chunked32, chunked64),
                                                       (chunked64, plain64))]
    print(f'{name:<18}{worst[0]:>22.1e}{worst[1]:>18.1e}{worst[2]:>16.1e}{worst[3]:>15.1e}',
          flush=True)


if __name__ == '__main__':
  main()
