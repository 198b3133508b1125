#!/usr/bin/env bash
# ctest man.pages: docs/man/bus.1 and busd.8 format without a groff warning, and say what the
# programs' --help says, so the pages cannot drift from them: every subcommand `bus --help`
# lists (and theirs, recursively), every option of each, every exit code and BUS_* variable
# `bus --help` names, every option `busd --help` lists, busd's signals.
#
#   tests/man/check.sh BUS BUSD MAN_DIR
set -uo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 BUS BUSD MAN_DIR" >&2
  exit 2
fi
bus=$1 busd=$2 dir=$3
failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}

for page in "$dir/bus.1" "$dir/busd.8"; do
  [ -f "$page" ] || { fail "$page: missing"; continue; }
  warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1) || fail "$page: groff failed"
  [ -z "$warnings" ] || fail "$page: groff warnings:"$'\n'"$warnings"
done

# The page source as words to search: \- is -, font changes and quotes dropped.
text_of() {
  sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\(aq/'"'"'/g' -e 's/\\(dq/"/g' -e 's/"//g' "$1"
}
bus_page=$(text_of "$dir/bus.1")
busd_page=$(text_of "$dir/busd.8")

# The options a --help lists: -x and --long, from its "Options:" section.
options_of() {
  sed -n '/^Options:/,/^$/p' | grep -oE '^ +(-[A-Za-z0-9],)?--?[A-Za-z0-9][-A-Za-z0-9]*' |
    tr ',' '\n' | tr -d ' '
}
# The subcommands a --help lists.
subcommands_of() {
  sed -n '/^Subcommands:/,/^$/p' | sed -n 's/^  \([a-z][-a-z]*\) .*/\1/p'
}
has_option() { # PAGE_TEXT OPTION
  grep -qE -- "(^|[^-A-Za-z0-9])$2([^-A-Za-z0-9]|\$)" <<<"$1"
}

checked=0
check_command() { # words after `bus`
  local help sub opt
  help=$("$bus" "$@" --help 2>&1) || { fail "bus $* --help failed"; return; }
  if [ $# -gt 0 ]; then
    grep -qE "(^|[^a-z])bus $*([^-a-z]|\$)" <<<"$bus_page" || fail "bus.1 does not describe 'bus $*'"
  fi
  for opt in $(options_of <<<"$help"); do
    has_option "$bus_page" "$opt" || fail "bus.1 does not mention $opt (bus $* --help lists it)"
  done
  checked=$((checked + 1))
  for sub in $(subcommands_of <<<"$help"); do
    check_command "$@" "$sub"
  done
}
check_command
[ "$checked" -ge 20 ] || fail "only $checked commands found in bus --help: is its format the same?"

top_help=$("$bus" --help 2>&1)
exit_section=$(sed -n '/EXIT STATUS/,/^\.SH/p' "$dir/bus.1")
codes=$(sed -n '/^Exit codes:/,/^$/p' <<<"$top_help" | sed -n 's/^  \([0-9]\+\)  .*/\1/p')
[ "$(wc -w <<<"$codes")" -ge 9 ] || fail "no exit codes found in bus --help"
for code in $codes; do
  grep -qx "\.B $code" <<<"$exit_section" || fail "bus.1 EXIT STATUS lacks code $code"
done
env_section=$(sed -n '/^\.SH ENVIRONMENT/,/^\.SH/p' "$dir/bus.1")
for var in $(grep -oE 'BUS_[A-Z_]+' <<<"$top_help" | sort -u) BUS_SERVER_KEY; do
  grep -qx "\.B $var" <<<"$env_section" || fail "bus.1 ENVIRONMENT lacks $var"
done

busd_help=$("$busd" --help 2>&1) || fail "busd --help failed"
n=0
for opt in $(options_of <<<"$busd_help"); do
  n=$((n + 1))
  has_option "$busd_page" "$opt" || fail "busd.8 does not mention $opt (busd --help lists it)"
done
[ "$n" -ge 10 ] || fail "only $n options found in busd --help"
signals=$(sed -n '/^\.SH SIGNALS/,/^\.SH/p' "$dir/busd.8")
for sig in SIGTERM SIGHUP; do
  grep -q "$sig" <<<"$signals" || fail "busd.8 SIGNALS lacks $sig"
done

[ "$failed" -eq 0 ] && echo "man pages: no groff warnings; $checked bus commands, $n busd options described"
exit "$failed"
