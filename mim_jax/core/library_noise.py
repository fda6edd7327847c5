"""Third-party noise after a failed checkpoint write, cut down so that the trainer's own one-line
report is what a user reads."""

import logging
import re


def short_library_errors(record) -> bool:
  """Keeps orbax's (and asyncio's) error records to their first line: a failed asynchronous save
  is logged by each of its threads with a traceback (hundreds of lines); the trainer reports it
  in one."""
  if record.levelno >= logging.ERROR and ("orbax" in record.pathname or record.name == "asyncio"):
    first = record.getMessage().splitlines()[0] if record.getMessage() else ""
    record.msg, record.args = first[:300], None
    record.exc_info = record.exc_text = record.stack_info = None
  return True


class DropClosedLoopTracebacks:
  """stderr, less the tracebacks that end in "RuntimeError: Event loop is closed": after a failed
  asynchronous checkpoint write, tensorstore's pending writes finish into orbax's closed event
  loop and each prints one (from several threads at once, interleaved line by line), hundreds
  in all, while the trainer reports the failure in one line. Their lines are dropped one by
  one; a traceback header is dropped when the line after it is one of them."""

  NOISE = re.compile(r"RuntimeError: Event loop is closed|\s+raise RuntimeError\('Event loop is "
                     r"closed'\)|\s+self\._check_closed\(\)|\s+File \".*asyncio/base_events\.py\", "
                     r"line \d+, in (call_soon_threadsafe|_check_closed)")
  HEADER = "Traceback (most recent call last):"

  def __init__(self, stream):
    self._stream, self._headers, self._partial = stream, 0, ""

  def write(self, text):
    self._partial += text
    *lines, self._partial = self._partial.split("\n")
    for line in lines:
      if line == self.HEADER:
        self._headers += 1
      elif self.NOISE.fullmatch(line):
        self._headers = 0
      else:
        self._stream.write(f"{self.HEADER}\n" * self._headers + line + "\n")
        self._headers = 0
    return len(text)

  def flush(self):
    self._stream.flush()

  def release(self):
    """Writes out what is held (a header, a line without its newline)."""
    self._stream.write(f"{self.HEADER}\n" * self._headers + self._partial)
    self._headers, self._partial = 0, ""
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)
