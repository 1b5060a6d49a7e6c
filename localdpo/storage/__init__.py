"""Files localdpo writes and reads back: atomic writes, checksums, the write guard, cache locations."""
