"""Triggers of the CXone provider (they run on Airflow's triggerer)."""
