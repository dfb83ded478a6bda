"""The `nemotron` command groups: nano3 stages, the steps catalog, and runs."""
