"""Recording benchmark reports in ``RESULTS.md``, one marked section per benchmark."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(name: str, title: str, report: str) -> None:
    """Replace the section marked ``<!-- name -->`` (appended when missing)."""
    marker = f"<!-- {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = f"{marker}\n## {title}\n\n{report}{marker}"
    if marker in text:
        before, _, rest = text.partition(marker)
        _, _, after = rest.partition(marker)
        text = before + section + after
    else:
        text = text + ("\n" if text else "# Benchmark results\n\n") + section + "\n"
    RESULTS.write_text(text)
