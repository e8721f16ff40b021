#!/usr/bin/env bash
# What `make test` sets up before the suite, where the machine allows it: the one-node SLURM cluster
# of slurm/ (for tests/test_slurm.py), headless Chromium (for the report screenshot) and the WordNet 3.0
# database METEOR reads (Debian's wordnet-base + wordnet-sense-index, in /usr/share/wordnet). Prints shell
# lines for `eval` on stdout (`export SLURM_CONF=...`); says on stderr, in one line each, what it could
# not set up and so which tests will be skipped. It never fails: a machine without root or apt still
# runs the rest of the suite.
set -u
cd "$(dirname "$0")/.."
say() { echo "make test: $*" >&2; }

can_install=yes
if [ "$(id -u)" != 0 ]; then can_install="no (not root)"
elif ! command -v apt-get >/dev/null; then can_install="no (no apt-get)"
fi

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :
elif [ "$can_install" = yes ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || say "the report screenshot test is skipped: installing chromium failed"
else
  say "the report screenshot test is skipped: chromium is not installed and cannot be: $can_install"
fi

if [ -f /usr/share/wordnet/data.noun ] && [ -f /usr/share/wordnet/index.sense ]; then :
elif [ "$can_install" = yes ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index; } >/dev/null 2>&1 \
    || say "METEOR tests fail: installing wordnet-base wordnet-sense-index failed"
else
  say "METEOR tests fail: WordNet 3.0 is not in /usr/share/wordnet and cannot be installed: $can_install"
fi

if [ -n "${SLURM_CONF:-}" ] && sinfo -h >/dev/null 2>&1; then
  echo "export SLURM_CONF=$SLURM_CONF"
elif [ "$can_install" = yes ] || command -v slurmctld >/dev/null; then
  if conf=$(bash slurm/start.sh 2>/tmp/medinject-slurm-start.log); then
    echo "export SLURM_CONF=$conf"
  else
    say "the SLURM tests are skipped: slurm/start.sh failed ($(tail -n 1 /tmp/medinject-slurm-start.log))"
  fi
else
  say "the SLURM tests are skipped: no SLURM cluster and none can be started here: $can_install"
fi
exit 0
