"""Pure functions by topic (losses, penalties): no training-loop knowledge."""
