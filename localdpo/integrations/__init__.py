"""Use localdpo's span-localized DPO loss inside other trainers.

- `localdpo.integrations.trl`: `LocalizedDPOTrainer`, a TRL `DPOTrainer` whose loss scores only the span.
- `localdpo.integrations.hf`: a `transformers.Trainer` mixin computing the loss from `collate_pairs` batches.
- `localdpo.integrations.compat`: the supported TRL / transformers versions, checked on import.

Submodules are imported on demand (TRL is heavy), so `import localdpo.integrations` stays cheap.
"""
