"""The league's test of a claim "row A beats row B on a protocol": Welch's t-test on the seed
values of the two rows (unequal variances, two-sided), at ``LEVEL``.

A row measured at one seed has no noise of its own, so a claim on it is not judged (its
difference is still shown). Verdicts: *holds* (A above B, p < LEVEL), *reversed* (A below B,
p < LEVEL), *not shown* (p >= LEVEL), *one seed: not judged*, *not measured* (a side missing).
"""

import math

LEVEL = 0.05   # two-sided


def welch(a: dict, b: dict) -> dict:
  """Welch's t-test from two rows' summaries ({"mean", "std" (ddof 1), "n"}, n >= 2 each):
  the difference of the means, its standard error, t, the Welch-Satterthwaite degrees of
  freedom and the two-sided p-value. Equal values on both sides (no spread at all): t is
  infinite where the means differ (p 0), p 1 where they do not."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
  diff, se = a["mean"] - b["mean"], math.sqrt(va + vb)
  if se == 0.0:
    return {"diff": diff, "se": 0.0, "t": math.copysign(math.inf, diff) if diff else 0.0,
            "df": float(a["n"] + b["n"] - 2), "p": 0.0 if diff else 1.0}
  df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
  t = diff / se
  return {"diff": diff, "se": se, "t": t, "df": df, "p": float(2 * stats.t.sf(abs(t), df))}


def verdict(a: dict, b: dict, level: float = LEVEL) -> dict:
  """The verdict on "A beats B" from the rows' summaries (None where not measured); points
  are percentage points of accuracy."""
  if not a or not b:
    return {"verdict": "not measured", "text": "not measured"}
  diff = 100 * (a["mean"] - b["mean"])
  if a["n"] < 2 or b["n"] < 2:
    seeds = f"{a['n']} vs {b['n']} seeds"
    return {"verdict": "one seed: not judged", "diff_points": diff,
            "text": f"one seed: not judged ({diff:+.1f} points, {seeds})"}
  w = welch(a, b)
  word = "not shown" if w["p"] >= level else "holds" if w["diff"] > 0 else "reversed"
  p = f"p {w['p']:.3f}" if w["p"] >= 0.001 else "p < 0.001"
  return {"verdict": word, "diff_points": diff, "se_points": 100 * w["se"], "t": w["t"],
          "df": w["df"], "p": w["p"],
          "text": f"{word}: {diff:+.1f} +- {100 * w['se']:.1f} points ({p}, "
                  f"{a['n']} vs {b['n']} seeds)"}
