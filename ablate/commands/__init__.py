"""Click commands, one module per workflow stage; ablate/cli.py registers them."""
