#!/usr/bin/env zsh
# What zsh's completion offers at the end of a command line, as a person pressing TAB gets it:
# an interactive `zsh -f -i` in a pseudo-terminal (zpty) with compinit and the completion
# directory on fpath, the line typed and TAB (complete-word) pressed. compadd is wrapped to
# also write each candidate it is given that matches the line to a file; printed one a line.
#
#   zsh complete.zsh COMPLETION_DIR 'bus req '      # exit 0; 2 when zsh did not complete
emulate -L zsh
setopt err_return no_unset
if (( $# != 2 )); then
  print -u2 "usage: zsh complete.zsh COMPLETION_DIR LINE"
  exit 2
fi
zmodload zsh/zpty
local dir=$1 line=$2
local work=$(mktemp -d)
local out=$work/out setup=$work/setup.zsh
trap 'zpty -d complete 2>/dev/null; rm -rf $work' EXIT
: >$out
cat >$setup <<SETUP
PROMPT='' RPROMPT='' PS2=''
unsetopt zle_bell
fpath=(${(q)dir} \$fpath)
autoload -U compinit && compinit -u -D
compadd() {
  # Callers that only ask which words match (-O, -A, -D) add nothing: not candidates.
  if (( \${@[(I)-[OAD]]} )); then
    builtin compadd "\$@"
    return
  fi
  local -a __hits
  builtin compadd -O __hits "\$@"
  (( \$#__hits == 0 )) || print -rl -- \$__hits >>${(q)out}
  builtin compadd "\$@"
}
_complete_test_done() { print -r -- '--done--' >>${(q)out} }
comppostfuncs=(_complete_test_done)
bindkey '^I' complete-word
print -r -- '--ready--' >>${(q)out}
SETUP

# Reads (and drops) what the shell writes, so it never blocks on a full terminal, until the
# file says `mark` or 20 s pass.
wait_for() {
  local mark=$1 chunk
  integer i
  for (( i = 0; i < 400; i++ )); do
    while zpty -rt complete chunk 2>/dev/null; do :; done
    grep -qx -- $mark $out && return 0
    sleep 0.05
  done
  return 1
}

zpty complete zsh -f -i
zpty -w complete "source ${(q)setup}"
if ! wait_for --ready--; then
  print -u2 "complete.zsh: zsh did not load compinit"
  exit 2
fi
zpty -w -n complete "$line"$'\t'
if ! wait_for --done--; then
  print -u2 "complete.zsh: no completion for: $line"
  exit 2
fi
grep -vx -e --ready-- -e --done-- $out | sort -u
