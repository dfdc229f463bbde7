"""Stage 2: the sanity gate (initial loss, overfit a tiny subset, LR range test)."""

from stagetune.sanity.gate import run_sanity_gate

__all__ = ["run_sanity_gate"]
