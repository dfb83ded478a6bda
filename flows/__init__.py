"""Prefect flows and the command line of nano3-flows."""

import os
import warnings

# Prefect's server sends telemetry by default; on machines without internet that is a logged
# traceback per heartbeat. Users who want it set the variable themselves.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The local server Prefect starts for a run without PREFECT_API_URL gets 20 s by default; on a
# busy 2-core laptop its first start (database migrations) can take longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# leptonai (imported by nemo_run) imports a deprecated starlette module; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*starlette\.middleware\.wsgi is deprecated.*")
