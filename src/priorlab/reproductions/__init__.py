"""One module per paper: its Claim (data) and run(arm, cfg, seed) -> metrics."""
