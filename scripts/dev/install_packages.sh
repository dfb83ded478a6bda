#!/usr/bin/env bash
# Install the Debian packages the local Slurm, MariaDB (for sacct) and PostgreSQL need, the headless
# Chromium (with its matching chromedriver) that the UI tests look at the Prefect UI with, and what
# NeMo-Run's ray.sub needs of a Slurm node: jq, pmix (`srun --mpi=pmix`), and a C compiler with
# Slurm's headers for local_slurm.py's --host-containers plugin.
#
# Idempotent and quiet: packages already installed are skipped, and nothing is fetched when all
# are present. The packages' own services are kept from starting while they install (a
# policy-rc.d that says no), because scripts/dev/*.py start their own throwaway daemons under
# a folder of their choosing; a system-wide slurmctld or mariadbd would hold the default ports.
set -euo pipefail

PACKAGES=(slurm-wlm slurmctld slurmd slurmdbd munge mariadb-server postgresql chromium chromium-driver
          jq libpmix-dev gcc libc6-dev libslurm-dev)

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=()
for package in "${PACKAGES[@]}"; do
    installed "$package" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing packages ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "error: missing packages ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi

echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    echo "error: apt-get could not install ${missing[*]}" >&2
    exit 1
fi
rm -f "$log"
