"""Files localdpo writes and reads back: `fileio` (every atomic write, files and directories), `fileintegrity`
(per-file checksums), `writeguard` (may a command write this path; the studio's locks), `paths` (caches)."""
