"""Prefect flows: thin orchestration of the stage tasks."""
