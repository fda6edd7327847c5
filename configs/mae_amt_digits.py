"""MAE + AMT on the bundled digits: configs/mae_digits.py (same model, budget and probe) with
attention-driven masking and throwing (amt.md).

  python -m mim_jax.main --config configs/mae_amt_digits.py --workdir runs/mae_amt_digits
  python -m mim_jax.main --config configs/mae_amt_digits.py:runlocal --workdir /tmp/mae_amt_quick

The paper's MAE ratios r 0.45 / t 0.40 on the 16 patches of a 16x16 digit: 7 masked, 6 thrown,
3 visible (plain MAE: 12 masked, 4 visible). As in the 400-epoch recipe, plain random masking
for the first 10% of the epochs (10 of 100), then a refresh of the attention maps every 10%.
Hardware: 2 CPU cores, a few minutes. Measured: RESULTS.md.
"""

from mim_jax import recipes


def get_config(arg=None):
  c = recipes.sibling_config("mae_digits", arg)
  return recipes.amt_digits(c, mask_ratio=0.45, throw_ratio=0.40, schedule_share=0.1)
