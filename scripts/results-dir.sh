# Sourced by the experiment scripts that write a results folder themselves (a sweep's
# folder is checked by `ringbeat-bench sweep`): the checks that keep results true to
# the code they name and never overwritten.

# require_clean_tree SCRIPT: refuses a tree with uncommitted changes to tracked files.
require_clean_tree() {
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "$1: the tree has uncommitted changes; commit them so the results name the code they measured" >&2
    exit 1
  fi
}

# new_results_dir SCRIPT BASE NAME: prints BASE/<UTC date>-NAME, refusing one that exists.
new_results_dir() {
  local dir
  dir="$2/$(date -u +%F)-$3"
  if [ -e "$dir" ]; then
    echo "$1: $dir exists; move it away first (results are never overwritten)" >&2
    exit 1
  fi
  echo "$dir"
}
