"""The reference model's log-probs, which every preference loss compares the policy against. Read first.

A DPO loss needs log p_ref of each scored token under the starting model. They are computed once and kept:

- `fingerprint`: what a value depends on, hashed (every weight byte, config and class of the model; the
  tokenizer's vocabulary, rules and template). A changed ingredient is a new key, never a stale value.
- `cache`: `ReferenceCache(model, tokenizer, ...)`, `.get(examples)` -> per-token log-probs of each side,
  computed on a miss with the plain pair forward (`localdpo.forward.pair_logps`) and stored.
- `store`: how the cache lies on disk (safetensors shards checked by sha256, a JSON index per shard, atomic
  writes); what `localdpo cache info|verify|clear` reads.
- `training`: the trainer's choice (`loss.reference`): cached values (default) or a live frozen model, and
  the held-out steers' values from the policy's own evaluation forward, so step-0 margins are exactly 0.

docs/refcache.md has the key, the layout and the measurements.
"""

from localdpo.reference.cache import ReferenceCache, ReferenceModelChangedError

__all__ = ["ReferenceCache", "ReferenceModelChangedError"]
