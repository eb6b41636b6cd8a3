"""Alignment from preferences (chapter 7), one module per step of RLHF, each findable by name.

* :mod:`ftcourse.align.feedback`: the simulated rater (polite *and* correct), its label noise,
  and the preference pairs it labels;
* :mod:`ftcourse.align.reward`: a reward model (an LM body with a scalar head on the last
  non-pad token) trained with the Bradley-Terry loss;
* :mod:`ftcourse.align.ppo`: PPO with a group baseline and a per-token KL penalty to the
  frozen SFT reference, written to be read end to end;
* :mod:`ftcourse.align.dpo`: direct preference optimisation, with an optional likelihood term
  on the chosen answers.

Everything builds on :mod:`ftcourse.lm` (chat encoding, log-probabilities, generation).
"""

from . import dpo, feedback, ppo, reward

__all__ = ["dpo", "feedback", "ppo", "reward"]
