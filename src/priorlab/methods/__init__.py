"""Paper cards: one module per paper, each registering its MethodCard(s)."""
