"""tqdm progress over the input bytes (compressed size for compressed files), with the token count as postfix."""
from __future__ import annotations

import sys


class ByteProgress:
    def __init__(self, total_bytes: int, enabled: bool = True):
        self._bar = None
        self._done = 0        # bytes of finished inputs
        self._current = 0     # bytes read of the current input
        self._tokens = 0
        if enabled:
            from tqdm import tqdm
            # disable=None: no bar when stderr is not a terminal (CI logs), as tqdm users expect.
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="shard",
                             disable=None, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def start_input(self) -> None:
        self._done += self._current
        self._current = 0

    def input_at(self, consumed: int) -> None:
        if self._bar is not None and consumed > self._current:
            self._bar.update(consumed - self._current)
            self._current = consumed

    def tokens(self, n: int) -> None:
        self._tokens += n
        if self._bar is not None and not self._bar.disable:
            self._bar.set_postfix_str(f"{self._tokens:,} tokens", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
