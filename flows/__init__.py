"""Prefect flows and the command line of nano3-flows."""

import os
import warnings

# Prefect's server sends telemetry by default; on machines without internet that is a logged
# traceback per heartbeat. Users who want it set the variable themselves.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# leptonai (imported by nemo_run) imports a deprecated starlette module; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*starlette\.middleware\.wsgi is deprecated.*")
