"""An LLM judge through any OpenAI-compatible endpoint: which of two answers to the same source
paragraph is better, the run's tuned model's or its base model's (or another run's tuned model's).

Each pair is asked in both orders (tuned as A, then tuned as B): a judge that prefers whatever it
reads first then cancels out, and the pairs whose verdict changed with the order are counted. A
reply must end with the line "VERDICT: A", "VERDICT: B" or "VERDICT: TIE"; one that does not is
asked again (`attempts` in all) and then recorded as unparseable, never dropped. HTTP 5xx, 429,
timeouts and dropped connections are retried with exponential backoff; requests run `concurrency`
at a time. Every verdict is one line appended at once to eval/<id>/judge.jsonl, so a crash loses
nothing, and a rerun skips what the same judge model has judged under the same rubric (its hash).

From the lines: the tuned model's win rate (ties and order-dependent verdicts count half) with a
bootstrap interval over examples, the order disagreements, the unparseable replies, and, where
people rated the same pairs (ratings.jsonl), the judge's agreement with them (accuracy, Cohen's
kappa), which says how far to trust the win rate.

The key is read from an environment variable whose name is given (settings or --api-key-env); the
key itself is never written to a file, a log or the run folder.

  settings.py  settings and rubric (params/judge/), endpoint URL and key, the shared names
  pairs.py     what is judged: an evaluation's tuned answers against base or another run's
  verdicts.py  the verdict line: parsed from a reply, appended to judge.jsonl, read back
  asking.py    the endpoint asked with retries (Asker), every pair in both orders (judge)
  scoring.py   judge.jsonl summed up (Results), agreement with people, the terminal lines

Every name is importable from here as it was from the single module before (`judge.judge`,
`judge.results`, ...); a test that patches a name patches it in the module that uses it.
"""
from .asking import RETRIED_STATUS, Asker, Outcome, _Failed, judge, messages  # noqa: F401
from .pairs import Pairs, _finished_evaluation, load_pairs  # noqa: F401
from .scoring import Results, agreement, read_human_ratings, results, summary_lines  # noqa: F401
from .settings import (  # noqa: F401
    BASE,
    JUDGE_DIR,
    JUDGE_FILE,
    RATINGS_FILE,
    TIE,
    TUNED,
    Settings,
    api_base,
    load_settings,
    read_key,
    rubric_hash,
    shown_endpoint,
)
from .verdicts import REMINDER, VERDICT_LINE, _append, _key, parse_verdict, read_verdicts  # noqa: F401
