"""An example celeriac project, laid out as a Celery project would be."""
