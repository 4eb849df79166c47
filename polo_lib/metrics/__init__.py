"""Metrics for English paper paragraphs rewritten as easy Korean: pure functions on lists of strings.

Inputs: `sources` are the English originals, `predictions` the model outputs (Korean),
`references` the Korean reference explanations, one per example (SARI also takes several).

Scales: the n-gram overlap scores (chrF, BLEU, ROUGE-L, SARI) are 0-100, as sacrebleu and the
SARI paper report them; cosines, shares and rates are 0-1 fractions. Which metrics exist, their
directions and labels: registry.METRICS; `score_all` scores every one of them.

  tokens    Kiwi morphemes / 13a tokens, shared helpers
  overlap   chrF, BLEU, ROUGE-L, SARI
  meaning   e5 embeddings and cosines
  style     Hangul share, length ratio, fillers, distinct-n, repeats
  glossary  the glossary file, term spans, term coverage
  scoring   the registry's metrics as functions of a Texts; score_all, during_training
"""
from .glossary import GlossaryEntry, english_term_spans, load_glossary, parse_glossary, term_coverage  # noqa: F401
from .meaning import E5_DIM, embed, meaning_preservation, meaning_similarity  # noqa: F401
from .overlap import bleu, chrf, rouge_l, sari  # noqa: F401
from .scoring import during_training, per_example, score, score_all  # noqa: F401
from .style import distinct_n, filler_rate, hangul_share, length_ratio, longest_repeated_ngram  # noqa: F401
from .tokens import korean_tokenizer, korean_tokens, tokens_13a  # noqa: F401
