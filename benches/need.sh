# Sourced by the bench scripts: `need PACKAGE:COMMAND...` installs the Debian
# packages whose commands are missing (`apt-get update` first) when run as
# root, and otherwise stops, naming the packages to install. COMMAND is a
# name looked up on PATH, or an absolute path (/usr/bin/time: bash's `time`
# keyword is not GNU time).
need() {
  local missing=() p cmd
  for p in "$@"; do
    cmd=${p#*:}
    if [ "${cmd#/}" != "$cmd" ]; then
      [ -x "$cmd" ] || missing+=("${p%%:*}")
    else
      command -v "$cmd" >/dev/null 2>&1 || missing+=("${p%%:*}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$(basename "$0"): missing commands; install the Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "$(basename "$0"): installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
