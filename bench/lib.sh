# Helpers shared by the bench/ scripts. Sourced, not run. The caller defines
# `die` and `log`, `run_dir` (where process logs go) and `used_ports` (" "-separated ports
# never to hand out).

# The benchmarks start several cachets at once: none of them binds the admin HTTP listener's
# fixed default port (a config file's `[admin] listen` is overridden too).
export CACHET_ADMIN_LISTEN=""

# A loopback port nothing listens on, never one handed out before in this run.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 20000))
        [[ $used_ports == *" $p "* ]] && continue
        if [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]]; then
            used_ports+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# Waits until a server answers PING, or dies with a pointer to its log.
wait_ping() { # name port pid
    local name=$1 port=$2 pid=$3
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited during startup; see $run_dir/$name.log"
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$name on 127.0.0.1:$port did not answer PING within 10s; see $run_dir/$name.log"
}

# The PID we account CPU to must be the server itself, not a wrapper or a
# parent that forked it off: its comm must be the expected program and it must
# own the listening socket on the port.
check_pid() { # name port pid expected-comm
    local name=$1 port=$2 pid=$3 want=${4:0:15} comm owners
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || die "$name: pid $pid has no /proc entry"
    [[ $comm == "$want" ]] \
        || die "$name: pid $pid is '$comm', expected '$want'; CPU accounting would measure the wrong process"
    owners=$(ss -Htlnp "( sport = :$port )" 2>/dev/null | grep -o 'pid=[0-9]*' | sort -u | tr '\n' ' ')
    if [[ -n $owners && $owners != "pid=$pid " ]]; then
        die "$name: 127.0.0.1:$port is listened on by ${owners% }, not by pid $pid"
    fi
    log "$name is pid $pid ($comm${owners:+, owns :$port})"
}

# utime+stime of a whole process (all its threads, live and exited), in clock
# ticks: fields 14 and 15 of /proc/PID/stat. Everything up to the last ") " is
# "pid (comm) " and is dropped first, as comm may contain spaces. Prints "nan"
# if the process is gone.
cpu_ticks() { # pid
    local line f
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || { echo nan; return 0; }
    read -r -a f <<<"${line##*) }" # f[0] is field 3 (state)
    echo $((f[11] + f[12]))
}
