"""Signatures and workflows, with Celery's names and wire forms.

- :class:`Signature` (``task.s(...)``, ``task.si(...)``, ``signature(...)``): one task call
  as data; ``a | b`` chains.
- :class:`chain`: tasks one after the other, each result passed on.
- :class:`group`: tasks in parallel, results in member order (a ``GroupResult``).
- :class:`chord`: a group, then a body run once with the list of its results.
- :class:`chunks`, :class:`xmap`, :class:`xstarmap`: one task over many arguments.
"""

from celeriac.canvas.chain import chain
from celeriac.canvas.chord import chord
from celeriac.canvas.group import group, maybe_unroll_group
from celeriac.canvas.maps import chunks, xmap, xstarmap
from celeriac.canvas.signature import (
    SIGNATURE_KEYS,
    Call,
    Signature,
    from_dict,
    maybe_signature,
    maybe_subtask,
    signature,
    signatures,
    subtask,
)
from celeriac.canvas.workflow import Workflow

__all__ = [
    "SIGNATURE_KEYS",
    "Call",
    "Signature",
    "Workflow",
    "chain",
    "chord",
    "chunks",
    "from_dict",
    "group",
    "maybe_signature",
    "maybe_subtask",
    "maybe_unroll_group",
    "signature",
    "signatures",
    "subtask",
    "xmap",
    "xstarmap",
]
