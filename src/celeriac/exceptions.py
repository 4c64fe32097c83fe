"""Every exception celeriac raises, in one hierarchy.

Names follow kombu and Celery where users already catch them (``OperationalError``,
``ContentDisallowed``, ``MessageStateError``), so ``except`` clauses carry over.
"""

from __future__ import annotations


class CeleriacError(Exception):
    """Base class of every error celeriac raises on purpose."""


class ImproperlyConfigured(CeleriacError, ValueError):
    """A setting, URL or argument cannot work as given; the message says how to fix it."""


class UnknownTransport(ImproperlyConfigured):
    """A broker URL names a scheme no transport is registered for."""


class MissingDependency(CeleriacError, ImportError):
    """An optional feature needs a package that is not installed (the message names the extra)."""


class OperationalError(CeleriacError):
    """The broker could not be reached or used, after any retries the policy allowed."""


class BrokerFileError(CeleriacError):
    """The embedded SQLite broker's file cannot be used: unwritable, not a database, corrupt.

    Not an ``OperationalError``: retrying cannot help, the file or its path must change.
    """


class NotFound(OperationalError):
    """An exchange or queue named by an operation does not exist on the broker."""


class LimitExceeded(CeleriacError):
    """A pool or channel limit was reached and the caller did not want to wait (longer)."""


class SerializationError(CeleriacError):
    """Base class of errors turning values into message bodies and back."""


class EncodeError(SerializationError):
    """A value could not be serialized with the chosen serializer."""


class DecodeError(SerializationError):
    """A message body could not be deserialized (corrupt, or not what its content type says)."""


class ContentDisallowed(SerializationError):
    """A message's content type is not in the accept list; the body was not decoded."""


class MessageStateError(CeleriacError):
    """A message was acknowledged or rejected when it had already been settled."""
