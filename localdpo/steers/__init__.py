"""Steers: the record and its files, the span rule on tokens, batches, conversion from other formats, the preview."""
