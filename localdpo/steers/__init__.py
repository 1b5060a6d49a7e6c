"""Steers: what a person makes by stopping a model, correcting one part of its answer and letting it resume.

Read in this order:

- `steer`: the `Steer` record (prompt, prefix, rejected, chosen), its validation, its JSONL files.
- `tokenization`: a steer as token ids and the scored spans (`divergent_span`: the span rule, on tokens).
- `batches`: tokenized steers as right-padded tensors for a forward.
- `convert`: steers from the preference formats researchers already hold (TRL, Step-DPO, `datasets`).
- `preview`: a steer file as the trainer will see it (`localdpo show`), and the studio's review.
- `text`: token pieces that add up to the decoded text (a character split over tokens stays whole).
"""
