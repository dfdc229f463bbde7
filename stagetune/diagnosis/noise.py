"""How much a validation loss moves by chance: the noise band a rise or a gap must clear to mean something.

Two estimates, the larger wins (each alone underestimates in some case):

- The validation size. A validation loss is a mean of per-row losses; its standard error is their
  standard deviation over sqrt(n). Per-row cross-entropy (and squared error) is heavy-tailed: most rows
  near zero, a few large, so its standard deviation is about its mean or more (an exponential's is
  exactly its mean). `loss / sqrt(n)` is then a conservative-in-the-small standard error: with 269
  validation rows at a loss of 0.026 it is 0.0016.
- The epoch-to-epoch jitter. Past the best epoch a flat curve only wobbles; the median absolute change
  between consecutive epochs there is what one epoch's wobble looks like. A real rise climbs steadily,
  so the rise over k epochs beats k wobbles only when it is systematic (a sign test in effect). Needs at
  least three changes past the best epoch; fewer and the size estimate stands alone.

Neither known (no validation size, too few epochs past the minimum): no band, and the share thresholds
of stagetune.diagnosis.curves decide alone, as before.
"""

import itertools
import math
import statistics
from collections.abc import Sequence

from schemas.results import EpochRecord

MIN_JITTER_STEPS = 3


def size_standard_error(loss: float, n_val: int | None) -> float | None:
    """Standard error of a mean validation loss over `n_val` rows (per-row spread taken as the mean)."""
    if n_val is None or n_val <= 0 or not math.isfinite(loss):
        return None
    return abs(loss) / math.sqrt(n_val)


def jitter_after_best(validated: Sequence[EpochRecord]) -> float | None:
    """Median absolute epoch-to-epoch change of the validation loss from its best epoch on; None: too few."""
    losses = [r.val_loss for r in validated if r.val_loss is not None]
    if len(losses) < 2:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    tail = losses[best:]
    steps = [abs(b - a) for a, b in itertools.pairwise(tail)]
    if len(steps) < MIN_JITTER_STEPS:
        return None
    return statistics.median(steps)


def noise_band(validated: Sequence[EpochRecord], n_val: int | None, z: float) -> tuple[float, str]:
    """The smallest difference of two validation losses (same rows, two epochs) that is not noise, and how
    it was estimated; (0, "") when nothing is known. The sqrt(2): a difference of two noisy values."""
    losses = [r.val_loss for r in validated if r.val_loss is not None]
    if not losses or z <= 0:
        return 0.0, ""
    parts: list[tuple[float, str]] = []
    se = size_standard_error(min(losses), n_val)
    if se is not None:
        parts.append((se, f"standard error {se:.2g} from {n_val} validation rows"))
    jitter = jitter_after_best(validated)
    if jitter is not None:
        parts.append((jitter, f"epoch-to-epoch jitter {jitter:.2g} after the best epoch"))
    if not parts:
        return 0.0, ""
    sigma, how = max(parts)
    return z * math.sqrt(2) * sigma, f"{z:g} x sqrt 2 x {how}"
