"""The serving limits' defaults, read by `polo serve` (its flags) and deploy.serve (its server) alike;
no import beyond the standard library, so the CLI builds its parser without FastAPI."""

DEFAULT_MAX_TOKENS = 256       # OpenAI leaves it to the server; ~128 Hangul syllables on SmolLM2
COMPLETIONS_MAX_TOKENS = 16    # /v1/completions without max_tokens: OpenAI's (and vLLM's) default there
MAX_TOKENS_LIMIT = 1024        # per request; the prompt + answer must also fit max_seq_length
MAX_BATCH_SIZE = 8             # rows generated together; 8 x 1024 tokens of KV cache is small on CPU
BATCH_WAIT_MS = 50             # how long the first request of a batch waits for company
MAX_QUEUE = 256                # requests accepted and not yet answered; one more gets 503
REQUEST_TIMEOUT_S = 300.0      # a request waiting and generating longer gets 504
MAX_STOP = 4                   # stop strings per request, as OpenAI allows
API_KEY_ENV = "POLO_API_KEY"   # the key from the environment: never on a command line, in a log or a run folder
