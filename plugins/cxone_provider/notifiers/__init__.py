"""Notifiers of the provider (DAG and task callbacks)."""
