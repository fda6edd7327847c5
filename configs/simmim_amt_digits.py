"""SimMIM + AMT on the bundled digits: configs/simmim_digits.py (same model, budget and probe)
with attention-driven masking and throwing (amt.md).

  python -m mim_jax.main --config configs/simmim_amt_digits.py --workdir runs/simmim_amt_digits
  python -m mim_jax.main --config configs/simmim_amt_digits.py:runlocal --workdir /tmp/q

The paper's SimMIM ratios r 0.44 / t 0.26 over the 16 mask cells, rounded up as the released
code does: 8 masked, 5 thrown, 3 visible (the encoder sees 1 + 11 tokens). Plain block masking
(0.6) for the first 20% of the epochs (40 of SimMIM + AMT's 200), then a refresh of the
attention maps every 20%. Hardware: 2 CPU cores, a few minutes. Measured: RESULTS.md.
"""

from mim_jax import recipes


def get_config(arg=None):
  c = recipes.sibling_config("simmim_digits", arg)
  return recipes.amt_digits(c, mask_ratio=0.44, throw_ratio=0.26, schedule_share=0.2)
