"""Benchmarks of stagetune against the tools users would pick instead (scripts, not tests).

Run a script as `python bench/<name>.py [--quick]` from the repository root; see bench/README.md.
"""
