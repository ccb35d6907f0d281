"""dsalib: simulating survey response distributions with LLMs.

Modules (flat, one concept each):

- ``surveys``   dataset specs, loaders, subgroup tables, sampling, pairs
- ``metrics``   JSD, WD, KL, averages, better-than-TS share, data savings
- ``baselines`` TS, noise floor, statistical baselines, zero-shot LLM baselines
- ``prompts``   prompt templates and option labels
- ``lm``        model loading and option-token probabilities
- ``engine``    fine-tuning strategies and the cached last-layer engine
- ``config``    one typed configuration per study, checked before any work
- ``stores``    store keys: resolved settings, spec, data fingerprint, STORE_VERSION
- ``study``     the set-up of a study notebook and its output folders
"""

__version__ = "0.1.0"

from .progress import import_tqdm_auto_quietly as _import_tqdm_auto_quietly

_import_tqdm_auto_quietly()  # libraries we import would print a TqdmWarning into every executed notebook
