"""Prefect deployments of the nano3 flow: deployments/prefect.yaml for the process work pool
`nano3-process`, and `python -m deployments.serve` for one long-running process."""
