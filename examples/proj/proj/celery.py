"""The app: with no broker or backend given, both are ``./celeriac.db`` (embedded SQLite)."""

from celeriac import Celery

app = Celery("proj", include=["proj.tasks"])
