# Shared by the benchmark scripts (sourced).

# The CPU ticks (1/100 s) spent so far by process $1 and by the PostgreSQL backends serving
# database $2: per request, a figure that the machine's other load does not move.
cpu_ticks() {
  local g p=0 pid
  g=$(awk '{print $14 + $15}' "/proc/$1/stat")
  for pid in $(pgrep -f "postgres: .*$2"); do
    p=$((p + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$g $p"
}
