"""Model forwards that give per-token log-probs of steer pairs. Read in this order:

- `model_facts`: what a forward needs to know about a model (text config, adapters, the KV-cache argument);
  a leaf, importing nothing of localdpo.
- `packing`: the shared-prefix layout, `[shared][chosen tail][rejected tail]` rows and their masks (pure).
- `span_head`: log-probs of the scored tokens only, without the full (B, T, V) logits.
- `pairs`: `FastPaths.for_model` (which fast paths a model runs, decided once) and `pair_logps`, the one pair
  forward the trainer, the evaluation, the reference cache and the integrations call.
"""

from localdpo.forward.model_facts import kv_cache_kwargs, returned_cache
from localdpo.forward.pairs import PLAIN, FastPaths, pair_logps, sequence_token_logps

__all__ = ["PLAIN", "FastPaths", "kv_cache_kwargs", "pair_logps", "returned_cache", "sequence_token_logps"]
