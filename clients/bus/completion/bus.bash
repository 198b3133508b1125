# bash completion for `bus`: commands, their options, and names busd knows (types after
# --type, services after `bus req`, subjects after `bus sub`), asked of the broker that -e,
# BUS_ENDPOINT or the default names.
#
# Installed as share/bash-completion/completions/bus; or: source clients/bus/completion/bus.bash

_bus_ask() { # $1: what to list (types, services, subjects); prints the first column
    "${_bus_cmd[@]}" --no-color --connect-timeout 0.5 ls "$1" 2>/dev/null | tail -n +2 | cut -f1
}

_bus() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local commands="sub pub req serve monitor top bench ls status types shm cluster"
    local global="-e --endpoint --json --no-color --connect-timeout -h --help"
    local cmd="" sub="" i positional=0
    _bus_cmd=("${COMP_WORDS[0]}")
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
        -e | --endpoint)
            _bus_cmd+=(-e "${COMP_WORDS[i + 1]}")
            ((i++))
            ;;
        --connect-timeout | --type | --proto | -I | --proto-path | --descriptor-set | -n | \
            --count | -t | --timeout | -q | --queue | -r | --rate | -H | --header | --reply | \
            --fail | -i | --interval | --rows | -s | --size | --pcap | --lines | --name | \
            --instances | --listen | --mode | --cwd | --env)
            ((i++))
            ;;
        -*) ;;
        *)
            if [[ -z "$cmd" ]]; then
                cmd="${COMP_WORDS[i]}"
            else
                ((positional++))
                [[ -z "$sub" ]] && sub="${COMP_WORDS[i]}"
            fi
            ;;
        esac
    done

    case "$prev" in
    --type)
        COMPREPLY=($(compgen -W "$(_bus_ask types)" -- "$cur"))
        return
        ;;
    --proto | --descriptor-set | --pcap)
        COMPREPLY=($(compgen -f -- "$cur"))
        return
        ;;
    -I | --proto-path)
        COMPREPLY=($(compgen -d -- "$cur"))
        return
        ;;
    -e | --endpoint | --connect-timeout | -n | --count | -t | --timeout | -q | --queue | -r | \
        --rate | -H | --header | --reply | --fail | -i | --interval | --rows | -s | --size)
        return
        ;;
    esac

    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "$commands $global" -- "$cur"))
        return
    fi
    local opts="" words=""
    case "$cmd" in
    sub)
        opts="--raw --headers -n --count -t --timeout -q --queue"
        words="$(_bus_ask subjects)"
        ;;
    pub) opts="--type --proto -I --proto-path --descriptor-set -n --count -r --rate -H --header" ;;
    req)
        opts="--type --proto -I --proto-path --descriptor-set -t --timeout"
        ((positional == 0)) && words="$(_bus_ask services)"
        ;;
    serve) opts="--reply --type --proto -I --proto-path --descriptor-set --fail -n --count --quiet" ;;
    monitor) opts="--raw --headers -n --count -t --timeout --pcap" ;;
    top) opts="-i --interval -n --count --rows" ;;
    bench)
        opts="-n --count -s --size -t --timeout --serve"
        ((positional == 0)) && words="pub sub req"
        ;;
    ls) ((positional == 0)) && words="clients subjects subscriptions services types queues" ;;
    cluster)
        if ((positional == 0)); then
            words="ls reload restart start stop scale delete logs"
        elif ((positional == 1)); then # app names: the first table of `bus cluster ls`
            words="$("${_bus_cmd[@]}" --no-color --connect-timeout 0.5 cluster ls 2>/dev/null |
                awk 'NR > 1 && NF == 0 { exit } NR > 1 { print $1 }')"
        fi
        case "$sub" in
        logs) opts="-n --lines -f --follow --timeout" ;;
        start) opts="--name -i --instances --listen --mode --cwd --env --timeout" ;;
        esac
        ;;
    shm)
        if ((positional == 0)); then
            words="ls rm"
        elif [[ "$sub" == rm ]]; then
            opts="--stale --force"
        fi
        ;;
    types)
        if ((positional == 0)); then
            words="ls show"
        elif [[ "$sub" == show ]]; then
            opts="--file"
            words="$(_bus_ask types)"
        fi
        ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts $global" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}

complete -F _bus bus
