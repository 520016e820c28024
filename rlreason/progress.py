"""The progress bar of every long command (train, eval, pretrain, convert, bench): tqdm on stderr with the
command's main figures in its postfix, and silent when stderr is not a terminal, so that logs, CI output and
piped runs hold only the commands' own lines."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, desc: str, show: bool = True, **options) -> tqdm:
    """A bar over `iterable` (or `total=` items) named `desc`; shown only when `show` and stderr is a terminal
    (tqdm's disable=None)."""
    return tqdm(iterable, desc=desc, disable=None if show else True, dynamic_ncols=True, **options)
