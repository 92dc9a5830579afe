"""``python -m mae_trainer`` (what ``accelerate launch -m mae_trainer`` runs) is the ``mae-trainer`` CLI."""

from .cli import entry

if __name__ == "__main__":
    raise SystemExit(entry())
