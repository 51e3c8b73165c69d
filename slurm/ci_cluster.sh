#!/usr/bin/env bash
# CI: install and start a single-node SLURM (slurm/local_cluster.sh), so the real-cluster tests of
# tests/test_slurm*.py run instead of skipping. It never fails the build: when apt, root or SLURM
# is unavailable it says why on one line and exits 0, and those tests skip with their reason.
# Running it again is harmless: an installed SLURM is not reinstalled, running daemons stay.
set -uo pipefail
cd "$(dirname "$0")"
say() { echo "ci_cluster: $*"; }
log=${TMPDIR:-/tmp}/infermatrix-ci-cluster.log
idle() { timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; }  # up: free, or busy with jobs
# accounting answers too: submitit and the tests poll sacct, which fails when mariadbd or slurmdbd is gone
accounting() { timeout 10 sacctmgr -n list cluster >/dev/null 2>&1; }

if command -v sinfo >/dev/null && idle && accounting; then
    say "SLURM is already up: $(timeout 10 sinfo -h -o '%P %D %T %c CPUs %m MB' | head -1)"
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    say "not root and no password-less sudo; SLURM tests will skip"
    exit 0
fi

if ! command -v sinfo >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        say "no SLURM and no apt-get to install it; SLURM tests will skip"
        exit 0
    fi
    packages=(slurm-wlm munge slurmdbd mariadb-server)
    apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=60)
    say "installing ${packages[*]} (log: $log)"
    # refresh the package lists only when they do not know the packages yet
    if ! apt-cache show "${packages[@]}" >/dev/null 2>&1; then
        timeout 180 "${apt[@]}" update >"$log" 2>&1
    fi
    if ! timeout 300 "${apt[@]}" install -y --no-install-recommends "${packages[@]}" >>"$log" 2>&1; then
        say "apt-get install failed (last lines of $log below); SLURM tests will skip"
        tail -n 5 "$log" | sed 's/^/ci_cluster:   /'
        exit 0
    fi
fi

if ! timeout 120 "${sudo[@]}" bash ./local_cluster.sh </dev/null >>"$log" 2>&1; then
    say "local_cluster.sh failed or timed out (last lines of $log below); SLURM tests will skip"
    tail -n 5 "$log" | sed 's/^/ci_cluster:   /'
    exit 0
fi
if idle; then
    say "SLURM is up: $(timeout 10 sinfo -h -o '%P %D %T %c CPUs %m MB' | head -1)"
else
    say "SLURM started but no node is idle ($(timeout 10 sinfo -h -o %T 2>&1 | head -1)); SLURM tests will skip"
fi
exit 0
