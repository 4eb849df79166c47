"""The align stage after fine-tuning: the run's SFT adapter trained further on the task's own rewards, by GRPO
(answers sampled and scored as it trains) or DPO (preference pairs), with TRL's trainers. The names below are the
package's: `from polo_lib import align; align.build(...)`.

  rewards   each metric usable as a reward (its own scoring code, scaled 0-1), the repetition and length terms,
            weighted sums, GRPOTrainer's reward functions
  pairs     preference pairs: sampled from the SFT model and scored (self), best against worst, with an audit file
  log       align_log.csv (each reward component, KL, answer length), the progress file, the live chart
  plan      each step in numbers, and its memory (the trainer's sequences, GRPO's generation cache)
  session   the checks before loading, build (GRPOTrainer / DPOTrainer on the SFT adapter), fit and finish
"""
from .log import AlignRecorder, first_last  # noqa: F401
from .pairs import best_and_worst, self_pairs  # noqa: F401
from .plan import memory, sequences_per_step  # noqa: F401
from .rewards import components, length, repetition, trl_functions, weighted  # noqa: F401
from .session import AlignReady, AlignSession, build, check_before_loading, checkpoints, finish, fit, section  # noqa: F401
