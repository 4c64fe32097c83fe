"""The application layer: the ``Celery`` app, tasks, settings, routing and the protocol."""
