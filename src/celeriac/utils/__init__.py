"""Small helpers shared across celeriac's layers."""
