#!/usr/bin/env bash
# The test command (README, CI): sets up everything on a fresh Debian 12 machine and runs the
# whole suite: ruff check, ruff format --check, mypy, pytest. Extra arguments go to pytest.
#
#   bash tests/run.sh [pytest args...]
#
# It creates .venv if missing, installs the project with the extras in EHDS_EXTRAS, installs
# PostgreSQL from Debian packages if needed, starts a throw-away server on 127.0.0.1 (a free
# port, data in a temporary directory) for the tests marked `postgres`, and always stops it and
# removes its data on exit.
#
# Environment:
#   EHDS_EXTRAS          extras to install, comma-separated (default: "test")
#   EHDS_FORCE_INSTALL   "1": run pip install even when pyproject.toml has not changed
#   EHDS_SKIP_POSTGRES   "1": do not install/start PostgreSQL (its tests skip); refused if CI=true
#   CI                   "true": a missing PostgreSQL or Java is a hard failure instead of a warning
#
# Java 17+ (for the Spark engine's tests, pyspark 4) is installed from Debian packages if
# `java` is missing or older; without it those tests skip, except in CI.
#
# Exported to pytest:
#   EHDS_TEST_POSTGRES_URL        postgresql+psycopg://ehds:...@127.0.0.1:PORT/ehds_test
#                                 (role `ehds` owns ehds_test and has CREATEDB)
#   EHDS_TEST_POSTGRES_ADMIN_URL  the same server as the superuser `postgres`
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

EHDS_EXTRAS="${EHDS_EXTRAS:-test}"
CI="${CI:-false}"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

# --------------------------------------------------------------------------- helpers

log() { printf '[run.sh] %s\n' "$*" >&2; }
die() {
    printf '[run.sh] ERROR: %s\n' "$*" >&2
    exit 1
}
warn_loud() {
    {
        printf '\n[run.sh] %s\n' '#####################################################################'
        printf '[run.sh] WARNING: %s\n' "$@"
        printf '[run.sh] %s\n\n' '#####################################################################'
    } >&2
}
is_ci() { [[ "${CI,,}" == "true" ]]; }

# Microseconds since the epoch (EPOCHREALTIME with its decimal separator removed, any locale).
now_us() { local t="$EPOCHREALTIME"; printf '%s' "${t//[!0-9]/}"; }
fmt_secs() { printf '%d.%d' "$(($1 / 1000000))" "$(($1 % 1000000 / 100000))"; }

RUN_START="$(now_us)"
declare -a TIMINGS=()

# stage NAME CMD...: run CMD and print its duration. CMD runs as a plain command (not in an
# `||` list), so that `set -e` stays in force inside shell functions; if it fails, the script
# exits with its status and on_exit records the stage as failed.
CUR_STAGE=""
CUR_START=0
record_stage() { # STATUS-TEXT
    local secs
    secs="$(fmt_secs $(($(now_us) - CUR_START)))"
    TIMINGS+=("$(printf '%-20s %7ss  %s' "$CUR_STAGE" "$secs" "$1")")
    log "time: $CUR_STAGE ${secs}s ($1)"
}
stage() {
    CUR_STAGE="$1"
    shift
    log "==> $CUR_STAGE"
    CUR_START="$(now_us)"
    "$@"
    record_stage ok
    CUR_STAGE=""
}

# Privilege for apt-get: nothing as root, else sudo (non-interactive unless on a terminal).
declare -a SUDO=()
have_root_access() {
    if ((EUID == 0)); then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    elif command -v sudo >/dev/null 2>&1 && [[ -t 0 ]]; then
        SUDO=(sudo)
    else
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    have_root_access || return 1
    if ((APT_UPDATED == 0)); then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null || return 1
}

# --------------------------------------------------------------------------- python

setup_venv() {
    if "$PY" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        log "python3 has no ensurepip: installing python3-venv"
        apt_install python3-venv || die "python3 -m venv needs the python3-venv package"
    fi
    if [[ -e "$VENV" ]]; then
        log "$VENV exists but has no working python/pip: re-creating it in place"
    else
        log "creating $VENV"
    fi
    python3 -m venv "$VENV"
}

install_project() {
    local stamp_file="$VENV/.ehds-install-stamp" stamp
    stamp="$(
        {
            printf 'extras=%s\n' "$EHDS_EXTRAS"
            "$PY" -c 'import sys; print(sys.version)'
            cat pyproject.toml
        } | sha256sum | cut -d' ' -f1
    )"
    if [[ "${EHDS_FORCE_INSTALL:-0}" != "1" && -f "$stamp_file" ]] &&
        [[ "$(cat "$stamp_file")" == "$stamp" ]] &&
        "$PY" -c 'import importlib.metadata as m; m.version("ehds-federation")' 2>/dev/null; then
        log "pyproject.toml and extras unchanged since the last install: skipping pip install"
        return 0
    fi
    rm -f "$stamp_file"
    log "pip install -e '.[$EHDS_EXTRAS]'"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-input -e ".[$EHDS_EXTRAS]"
    printf '%s\n' "$stamp" >"$stamp_file"
}

# --------------------------------------------------------------------------- postgresql

PG_BIN=""
PG_TMP=""
PG_DATA=""
PG_STARTED=0

find_pg_bin() {
    local dir best=""
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/pg_ctl" && -x "$dir/initdb" ]] || continue
        if [[ -z "$best" ]] || [[ "$(printf '%s\n%s\n' "$best" "$dir" | sort -V | tail -n1)" == "$dir" ]]; then
            best="$dir"
        fi
    done
    PG_BIN="$best"
    [[ -n "$PG_BIN" ]]
}

# No PostgreSQL: a hard failure in CI, a loud warning (its tests skip) elsewhere.
no_postgres() {
    if is_ci; then
        die "$1 (CI=true: PostgreSQL is required)"
    fi
    warn_loud "$1" "Continuing WITHOUT PostgreSQL: tests marked 'postgres' will be SKIPPED."
    return 0
}

install_postgres() {
    if [[ "${EHDS_SKIP_POSTGRES:-0}" == "1" ]]; then
        if is_ci; then
            die "EHDS_SKIP_POSTGRES=1 is not allowed when CI=true"
        fi
        no_postgres "EHDS_SKIP_POSTGRES=1: not installing or starting PostgreSQL."
        return 0
    fi
    if find_pg_bin; then
        log "PostgreSQL found: $PG_BIN"
        return 0
    fi
    log "PostgreSQL not found under /usr/lib/postgresql/*/bin: installing the Debian package"
    if ! apt_install postgresql; then
        no_postgres "Could not install PostgreSQL (apt-get needs root or sudo)."
        return 0
    fi
    stop_package_clusters
    find_pg_bin || no_postgres "postgresql installed, but no pg_ctl under /usr/lib/postgresql/*/bin."
    return 0
}

# Where the Debian package has just created and started its default cluster (a machine with an
# init system; Docker images forbid that with policy-rc.d), stop it: we use our own server.
stop_package_clusters() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local ver name port status rest
    while read -r ver name port status rest; do
        if [[ "$status" == online* ]]; then
            log "stopping the cluster $ver/$name (port $port) that the postgresql package started"
            "${SUDO[@]}" pg_ctlcluster "$ver" "$name" stop || true
        fi
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
}

# Run a PostgreSQL program as the user owning the cluster: `postgres` when we are root (the
# server refuses to run as root), else ourselves. Runs from PG_TMP so that the cwd is readable.
as_pg() {
    if ((EUID == 0)); then
        if command -v runuser >/dev/null 2>&1; then
            (cd "$PG_TMP" && runuser -u postgres -- "$@")
        else
            (cd "$PG_TMP" && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
        fi
    else
        (cd "$PG_TMP" && "$@")
    fi
}

free_port() {
    "$PY" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

start_postgres() {
    if [[ -z "$PG_BIN" ]]; then
        return 0
    fi
    if ((EUID == 0)) && ! getent passwd postgres >/dev/null; then
        no_postgres "Running as root but there is no 'postgres' system user to run the server."
        return 0
    fi

    PG_TMP="$(mktemp -d /tmp/ehds-pg.XXXXXX)"
    PG_DATA="$PG_TMP/data"
    chmod 700 "$PG_TMP"
    if ((EUID == 0)); then
        chown postgres: "$PG_TMP"
    fi

    local su_pw ehds_pw pwfile="$PG_TMP/pwfile"
    su_pw="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
    ehds_pw="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
    (umask 077 && printf '%s\n' "$su_pw" >"$pwfile")
    if ((EUID == 0)); then
        chown postgres: "$pwfile"
    fi

    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --pwfile="$pwfile" -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$PG_TMP/initdb.log" 2>&1 ||
        {
            cat "$PG_TMP/initdb.log" >&2
            die "initdb failed"
        }
    rm -f "$pwfile"
    printf "\ninclude 'ehds-test.conf'\n" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null

    # The port is free when picked but could be taken before the server binds it: retry.
    local port attempt
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        as_pg tee "$PG_DATA/ehds-test.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_TMP'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
        PG_STARTED=1 # from now on, on_exit stops whatever postmaster.pid names
        if as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_TMP/postgres.log" -w -t 60 -s start; then
            break
        fi
        if [[ -f "$PG_DATA/postmaster.pid" ]]; then
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 -s stop || true
        fi
        if ((attempt == 5)); then
            cat "$PG_TMP/postgres.log" >&2 || true
            die "could not start PostgreSQL"
        fi
        log "PostgreSQL did not start on port $port (attempt $attempt): retrying"
    done

    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_TMP" -p "$port" -U postgres \
        -d postgres >/dev/null <<EOF
CREATE ROLE ehds LOGIN CREATEDB PASSWORD '$ehds_pw';
CREATE DATABASE ehds_test OWNER ehds;
EOF

    export EHDS_TEST_POSTGRES_URL="postgresql+psycopg://ehds:$ehds_pw@127.0.0.1:$port/ehds_test"
    export EHDS_TEST_POSTGRES_ADMIN_URL="postgresql+psycopg://postgres:$su_pw@127.0.0.1:$port/postgres"
    log "PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{print $NF}') on 127.0.0.1:$port (data: $PG_DATA)"
}

stop_postgres() {
    if ((PG_STARTED == 1)) && [[ -f "$PG_DATA/postmaster.pid" ]]; then
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 -s stop; then
            log "pg_ctl stop -m fast failed: trying -m immediate"
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 -s stop || true
        fi
        # Last resort: kill exactly the postmaster this run started.
        if [[ -f "$PG_DATA/postmaster.pid" ]]; then
            local pid
            pid="$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
            if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
                log "killing postmaster $pid"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 1
            fi
        fi
    fi
    PG_STARTED=0
    if [[ -n "$PG_TMP" && -d "$PG_TMP" ]]; then
        rm -rf -- "$PG_TMP"
    fi
    PG_TMP=""
}

# --------------------------------------------------------------------------- java (spark)

JAVA_MIN=17

java_major() {
    command -v java >/dev/null 2>&1 || return 1
    local version
    # `java -version` prints e.g.: openjdk version "17.0.15" 2025-04-15 (on stderr).
    version="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    version="${version#1.}" # Java 8 reads "1.8.0_..."
    printf '%s' "${version%%[.+-]*}"
}

java_ok() {
    local major
    major="$(java_major)" || return 1
    [[ "$major" =~ ^[0-9]+$ ]] && ((major >= JAVA_MIN))
}

install_java() {
    if java_ok; then
        log "Java $(java_major) found: $(command -v java)"
        return 0
    fi
    log "Java $JAVA_MIN+ not found (Spark needs it): installing it from Debian packages"
    if apt_install openjdk-17-jre-headless || apt_install default-jre-headless; then
        hash -r
    fi
    if java_ok; then
        log "Java $(java_major) installed: $(command -v java)"
        return 0
    fi
    if is_ci; then
        die "could not install Java $JAVA_MIN+ (CI=true: the Spark engine's tests need it)"
    fi
    warn_loud "Could not install Java $JAVA_MIN+ (apt-get needs root or sudo)." \
        "Continuing WITHOUT Java: the Spark engine's tests will be SKIPPED."
    return 0
}

# --------------------------------------------------------------------------- cleanup

on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    if [[ -n "$CUR_STAGE" ]]; then
        record_stage "FAILED, exit $rc"
    fi
    stop_postgres
    if ((${#TIMINGS[@]} > 0)); then
        log "timings:"
        printf '[run.sh]   %s\n' "${TIMINGS[@]}" >&2
    fi
    log "total: $(fmt_secs $(($(now_us) - RUN_START)))s, exit $rc"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --------------------------------------------------------------------------- main

run_pytest() {
    local rc=0
    "$VENV/bin/pytest" "$@" || rc=$?
    if ((rc == 5)); then
        log "pytest collected no tests (exit 5): that counts as a failure"
    fi
    return "$rc"
}

stage "venv" setup_venv
stage "pip install" install_project
stage "postgres install" install_postgres
stage "java install" install_java
stage "ruff check" "$VENV/bin/ruff" check .
stage "ruff format --check" "$VENV/bin/ruff" format --check .
stage "mypy" "$VENV/bin/mypy"
stage "postgres start" start_postgres
stage "pytest" run_pytest "$@"
