"""The pre-training loop and what it needs (optimizer groups, schedules, visualisation)."""
