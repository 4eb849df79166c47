"""The training data: read and validate the raw files, clean, group, split, make chats, save.

Each example (a paper's paragraph, or one chat) becomes one chat through the model's own template;
the processed splits are saved with the inputs hash they were made from, and prepared again when
the inputs change. The names below are the package's: `from polo_lib import data; data.prepare(...)`.

  formats   the three raw formats (paper, messages, alpaca) read and validated; Record, Paragraph
  clean     filler phrases out of every answer, whitespace normalised
  split     paper sentences grouped into paragraphs; seeded splits by example, each paper on its own
  checks    near-duplicates, leakage into validation and test, quality flags: prepare stops on them
  card      the dataset card (README.md) written beside the processed data
  review    a teacher's drafts reviewed: Accept / Save edit / Reject, each written at once (review_data.ipynb)
  lengths   token lengths through the model's template; the over-length policy (fail or drop)
  store     the processed folder, its inputs hash, saving and loading it
  prepared  every step together (prepare, Prepared) and load_or_prepare
"""
from .checks import checks_table  # noqa: F401
from .clean import clean_examples, clean_records, remove_fillers  # noqa: F401
from .formats import (  # noqa: F401
    ALPACA_FIELDS,
    CHAT_ROLES,
    FIELDS,
    ID_PATTERN,
    Paragraph,
    Record,
    load_chats,
    load_preferences,
    load_raw,
    validate_records,
)
from .lengths import apply_length_policy, length_stats, token_length, token_lengths  # noqa: F401
from .prepared import Prepared, load_or_prepare, prepare, read_examples, split_sizes, split_table  # noqa: F401
from .split import (  # noqa: F401
    SPLITS,
    _key,
    group_paragraphs,
    paragraph_table,
    split_paragraphs,
    to_examples,
)
from .store import (  # noqa: F401
    LAYOUT,
    current_hash,
    describe,
    inputs_hash,
    load_processed,
    load_stats,
    prepared_hash,
    processed_path,
    save,
)
