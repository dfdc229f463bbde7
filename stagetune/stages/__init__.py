"""Stage bodies: plain functions that run one stage and record it in MLflow (wrapped by tasks/)."""
