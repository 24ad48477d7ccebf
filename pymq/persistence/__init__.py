"""Persistence: every published message appended to JSON-lines files on disk,
and the broker made again from them after a restart. Rooms:

  log.py         a topic's files: append, rotate, fsync, retain; read back
  writer.py      the writer thread (one per topic, in the supervisor)
  checkpoint.py  durable group positions (groups.json)
  restore.py     recovery at start (a backlog larger than the ring streamed in by
                 the supervisor's Restorer), replay from disk, a deleted topic's files

docs/design.md ("Persistence") says how they meet the contract.
"""

from .checkpoint import group_positions, read_checkpoint, write_checkpoint
from .log import LogReport, TopicLog, ensure_dir, read_log, replay, topic_dir, write_lines
from .restore import Restorer, flush_stale_ring, remove_topic_files, restore_topic, topics_on_disk
from .writer import BATCH, Writer

__all__ = ["BATCH", "LogReport", "Restorer", "TopicLog", "Writer", "ensure_dir", "flush_stale_ring",
           "group_positions", "read_checkpoint", "read_log", "remove_topic_files", "replay",
           "restore_topic", "topic_dir", "topics_on_disk", "write_checkpoint", "write_lines"]
