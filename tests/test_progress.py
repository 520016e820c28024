"""The progress bar of the long commands: drawn on a terminal, silent elsewhere and when asked to be quiet."""

import io

from rlreason.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drawn(stream, show: bool) -> str:
    with progress_bar(range(3), desc="grpo", show=show, file=stream) as bar:
        for _ in bar:
            bar.set_postfix(reward="0.50")
    return stream.getvalue()


def test_a_terminal_shows_the_bar_with_its_figures():
    text = drawn(Terminal(), show=True)
    assert "grpo" in text and "3/3" in text and "reward=0.50" in text


def test_a_pipe_or_a_quiet_command_shows_nothing():
    assert drawn(io.StringIO(), show=True) == ""
    assert drawn(Terminal(), show=False) == ""
