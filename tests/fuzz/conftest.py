"""Prints the fuzz suite's counts (cases tried, clear errors, verified models, wrong) after the run."""

from __future__ import annotations

import collections
import sys


def pytest_terminal_summary(terminalreporter):
    """One line per mutation kind and a total line, when the fuzz test ran."""
    module = sys.modules.get("test_fuzz")
    counts = getattr(module, "COUNTS", None)
    if not counts:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fuzz cases")
    total = sum(counts.values(), collections.Counter())
    for kind in sorted(counts):
        c = counts[kind]
        write(
            f"{kind:24s} tried {sum(c.values()):4d}  errors {c['error']:4d}  verified {c['verified']:4d}  "
            f"wrong {c['wrong']}  crash {c['crash']}"
        )
    write(
        f"{'total':24s} tried {sum(total.values()):4d}  errors {total['error']:4d}  verified "
        f"{total['verified']:4d}  wrong {total['wrong']}  crash {total['crash']}"
    )
