"""A metric as a user adds one: a function of `registry.Texts` and one `registry.Metric`, nothing else.
tests/scored_run.py registers it before training; tests/test_task_metrics.py checks that it was scored at
every evaluation, shown on the terminal line, plotted, summarized and reported."""
from polo_lib import registry


def finished_share(texts: registry.Texts) -> float:
    """Share of answers that end a sentence (., ?, ! or 다): an answer cut at the token cap does not."""
    ends = [p.rstrip().endswith((".", "?", "!", "다")) for p in texts.predictions]
    return sum(ends) / len(ends)


METRIC = registry.Metric("finished_share", "finished", "answers that end a sentence", finished_share,
                         percent=True, during_training=True)
