#!/usr/bin/env bash
# CI only: Debian's Slurm daemons and munge, for the single-node cluster of tests/test_slurm.py
# (tests/slurm_cluster.py starts and stops it). Without them that test is skipped.
# Not part of envs/install.sh: a user's machine needs none of this to run the workflow.
set -euo pipefail
if command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ]; then exit 0; fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" -ne 0 ]; then
  echo "install-slurm: needs root and apt-get; the Slurm test will be skipped" >&2
  exit 0
fi
apt-get update -qq
# --no-install-recommends: 8 packages (about 4 MB) instead of slurm-wlm's 43.
# Debian's policy-rc.d, where present, keeps apt from starting the daemons.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  slurmctld slurmd slurm-client munge >/dev/null
