"""Every bound on spec input, in one place: what `ablate validate` refuses so that any file it is given
is checked in well under 2 s and 500 MB (a real spec is a few KB, a few hundred values, under 10 levels).
"""

from __future__ import annotations

# Files: a spec and everything it extends, read at most this many bytes in all (a real spec: ~2 KB).
MAX_FILE_BYTES = 256 * 1024
# Values (mappings, lists and scalars) of the whole document once aliases and extends are expanded.
MAX_NODES = 5_000
# Nesting of mappings and lists (sweep.grid[0].distill.lr[2] is 5 levels).
MAX_DEPTH = 64
# Files in one `extends:` chain (a spec extending a base extending a base ...).
MAX_EXTENDS = 32

# Field values: anything above these is a typo or an attack, never a real run.
MAX_TOKENS = 10**15  # 1000T tokens; the largest published pretraining runs are ~36T
MAX_TOKEN_TEXT = 64  # characters in a written token count such as "1.8B"
MAX_COUNT = 10**9  # batch sizes, sequence lengths, steps, model dimensions, samples
MAX_RESOURCES = 100_000  # CPUs or GPUs of one trial or shared stage
MAX_RATE = (
    1e30  # learning rates and weight decay: finite, and large enough for a deliberately diverging trial
)
MAX_TEMPERATURE = 1000.0  # distillation temperature (the literature uses 1 to 20)
MAX_PATH_CHARS = 4096  # a path, URL or model id (Linux PATH_MAX)
MAX_SEED = 2**32 - 1  # numpy and torch both take it
MAX_TRIALS = 2_000  # the most sweep.max_trials may allow: each trial is a distillation run (and 2000
# trials take ~0.5 s to validate and plan, the most the 2 s bound leaves room for on a slow machine)

# Messages: a value shown in a message is cut to this many characters.
SHOW_CHARS = 60
