#!/bin/bash
# The launchd simulator: a stand-in for macOS's launchctl, for tests on
# Linux. It keeps each domain's jobs in a directory next to its own
# (../state), starts a real process for every job that runs, gives
# launchctl's documented exit codes (113 not loaded, 3 boot-out of a job
# that is not loaded, 5 already loaded, 37 a teardown still under way,
# 36 a boot-out under way), and tears jobs down asynchronously on
# bootout: SIGTERM, SIGKILL after the plist's ExitTimeOut, then the job
# is forgotten after a delay.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
state="$here/state"
mkdir -p "$state/domains" "$state/disabled" "$state/faults"
printf '%s\n' "$*" >> "$state/calls.log"
# Also into a file the test names (its activation markers, to see the
# order of the two).
if [ -f "$state/journal" ]; then printf 'launchctl %s\n' "$*" >> "$(cat "$state/journal")"; fi

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# domain/label -> the job's directory; sets $label and $where.
job_dir() {
	local t=$1 rest
	case $t in
	system/?*) label=${t#system/}; where=system; dom=system ;;
	gui/*/?*) rest=${t#gui/}; label=${rest#*/}; where="user gui: ${rest%%/*}"; dom="gui_${rest%%/*}" ;;
	*) echo "Unrecognized target specifier." >&2; exit 64 ;;
	esac
	dir="$state/domains/$dom/$label"
}

domain_key() {
	case $1 in
	system) echo system ;;
	gui/*) echo "gui_${1#gui/}" ;;
	*) echo "Unrecognized target specifier." >&2; exit 64 ;;
	esac
}

x() { xmllint --nonet --xpath "$2" "$1" 2>/dev/null; }
value() { x "$1" "string(/plist/dict/key[.='$2']/following-sibling::*[1])"; }
kind() { x "$1" "name(/plist/dict/key[.='$2']/following-sibling::*[1])"; }

running_pid() {
	local p
	[ -f "$1/pid" ] || return 1
	p=$(cat "$1/pid")
	kill -0 "$p" 2>/dev/null && echo "$p"
}

start_job() {
	local dir=$1 plist=$1/plist.copy n i args=() envs=() out err runs
	n=$(x "$plist" "count(/plist/dict/key[.='ProgramArguments']/following-sibling::*[1]/string)")
	if [ "${n:-0}" -gt 0 ]; then
		for ((i = 1; i <= n; i++)); do
			args+=("$(x "$plist" "string(/plist/dict/key[.='ProgramArguments']/following-sibling::*[1]/string[$i])")")
		done
	else
		args+=("$(value "$plist" Program)")
	fi
	n=$(x "$plist" "count(/plist/dict/key[.='EnvironmentVariables']/following-sibling::*[1]/key)")
	for ((i = 1; i <= ${n:-0}; i++)); do
		envs+=("$(x "$plist" "string(/plist/dict/key[.='EnvironmentVariables']/following-sibling::*[1]/key[$i])")=$(x "$plist" "string(/plist/dict/key[.='EnvironmentVariables']/following-sibling::*[1]/key[$i]/following-sibling::*[1])")")
	done
	out=$(value "$plist" StandardOutPath)
	err=$(value "$plist" StandardErrorPath)
	runs=$(($(cat "$dir/runs" 2>/dev/null || echo 0) + 1))
	echo "$runs" > "$dir/runs"
	rm -f "$dir/exit" "$dir/pid"
	setsid bash -c '
		dir=$1; shift
		"$@" &
		child=$!
		echo "$child" > "$dir/pid"
		wait "$child"
		echo $? > "$dir/exit"
	' sim-job "$dir" env -i "${envs[@]}" "${args[@]}" < /dev/null >> "${out:-/dev/null}" 2>> "${err:-/dev/null}" &
	echo $! > "$dir/pgid"
	for ((i = 0; i < 200; i++)); do
		[ -f "$dir/pid" ] && break
		sleep 0.01
	done
}

# Ends the job's process: SIGTERM, SIGKILL after $2 seconds, then the
# rest of its process group.
stop_job() {
	local dir=$1 timeout=$2 pid pgid end
	pid=$(running_pid "$dir") || pid=
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null
		end=$(($(now_ms) + timeout * 1000))
		while kill -0 "$pid" 2>/dev/null && [ "$(now_ms)" -lt "$end" ]; do sleep 0.02; done
		kill -KILL "$pid" 2>/dev/null
		while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
	fi
	pgid=$(cat "$dir/pgid" 2>/dev/null) || pgid=
	for ((i = 0; i < 100; i++)); do
		[ -f "$dir/exit" ] && break
		sleep 0.01
	done
	[ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null
	rm -f "$dir/pid"
}

exit_timeout() {
	local t
	t=$(value "$1/plist.copy" ExitTimeOut)
	echo "${t:-5}"
}

cmd=${1:-}
shift || true
case $cmd in
print)
	job_dir "${1:-}"
	if [ ! -d "$dir" ]; then
		echo "Could not find service \"$label\" in domain for $where" >&2
		exit 113
	fi
	pid=$(running_pid "$dir") || pid=
	echo "$1 = {"
	printf '\tactive count = %s\n' "$([ -n "$pid" ] && echo 1 || echo 0)"
	printf '\tpath = %s\n' "$(cat "$dir/plist")"
	printf '\ttype = LaunchDaemon\n'
	if [ -f "$dir/tearing-down" ]; then
		printf '\tstate = exiting\n'
	elif [ -n "$pid" ]; then
		printf '\tstate = running\n'
	else
		printf '\tstate = not running\n'
	fi
	printf '\n\tdomain = %s\n' "${1%/*}"
	printf '\truns = %s\n' "$(cat "$dir/runs" 2>/dev/null || echo 0)"
	[ -n "$pid" ] && printf '\tpid = %s\n' "$pid"
	if [ -f "$dir/exit" ]; then
		code=$(cat "$dir/exit")
		if [ "$code" -gt 128 ]; then
			printf '\tlast terminating signal = Signal: %s\n' $((code - 128))
		else
			printf '\tlast exit code = %s\n' "$code"
		fi
	else
		printf '\tlast exit code = (never exited)\n'
	fi
	printf '\n\tresource coalition = {\n\t\tstate = active\n\t\tpid = 1\n\t}\n\n'
	printf '\tjob state = %s\n' "$([ -n "$pid" ] && echo running || echo exited)"
	echo "}"
	;;
bootstrap)
	key=$(domain_key "${1:-}")
	plist=${2:-}
	if [ ! -f "$plist" ]; then
		echo "Bootstrap failed: 2: No such file or directory" >&2
		exit 2
	fi
	label=$(value "$plist" Label)
	dir="$state/domains/$key/$label"
	fault="$state/faults/bootstrap-$label"
	if [ -f "$fault" ]; then
		read -r code count < "$fault"
		if [ "$count" -gt 0 ]; then
			echo "$code $((count - 1))" > "$fault"
			echo "Bootstrap failed: $code: Operation already in progress" >&2
			exit "$code"
		fi
	fi
	if [ -d "$dir" ]; then
		if [ -f "$dir/tearing-down" ]; then
			echo "Bootstrap failed: 37: Operation already in progress" >&2
			exit 37
		fi
		echo "Bootstrap failed: 5: Input/output error" >&2
		exit 5
	fi
	if [ -f "$state/disabled/$key/$label" ]; then
		echo "Bootstrap failed: 119: Service is disabled" >&2
		exit 119
	fi
	mkdir -p "$dir"
	echo "$plist" > "$dir/plist"
	cp "$plist" "$dir/plist.copy"
	if [ "$(kind "$plist" RunAtLoad)" = true ] || [ "$(kind "$plist" KeepAlive)" = true ] ||
		[ "$(kind "$plist" KeepAlive)" = dict ]; then
		start_job "$dir"
	fi
	;;
bootout)
	job_dir "${1:-}"
	if [ ! -d "$dir" ]; then
		echo "Boot-out failed: 3: No such process" >&2
		exit 3
	fi
	if [ -f "$dir/tearing-down" ]; then
		echo "Boot-out failed: 36: Operation now in progress" >&2
		exit 36
	fi
	touch "$dir/tearing-down"
	delay=$(cat "$state/bootout-delay" 2>/dev/null || echo 0.3)
	timeout=$(exit_timeout "$dir")
	(
		stop_job "$dir" "$timeout"
		sleep "$delay"
		rm -rf "$dir"
	) < /dev/null > /dev/null 2>&1 &
	echo $! >> "$state/teardown-pids"
	;;
kickstart)
	kill=
	if [ "${1:-}" = -k ]; then
		kill=1
		shift
	fi
	job_dir "${1:-}"
	if [ ! -d "$dir" ]; then
		echo "Could not find service \"$label\" in domain for $where" >&2
		exit 113
	fi
	if running_pid "$dir" > /dev/null; then
		[ -z "$kill" ] && exit 0
		stop_job "$dir" "$(exit_timeout "$dir")"
	fi
	start_job "$dir"
	;;
kill)
	sig=${1:-}
	job_dir "${2:-}"
	if [ ! -d "$dir" ]; then
		echo "Could not find service \"$label\" in domain for $where" >&2
		exit 113
	fi
	if pid=$(running_pid "$dir"); then
		kill "-$sig" "$pid"
	else
		echo "No process to signal." >&2
		exit 3
	fi
	;;
enable | disable)
	job_dir "${1:-}"
	mkdir -p "$state/disabled/$dom"
	if [ "$cmd" = enable ]; then rm -f "$state/disabled/$dom/$label"; else touch "$state/disabled/$dom/$label"; fi
	;;
*)
	echo "Unrecognized subcommand: $cmd" >&2
	exit 64
	;;
esac
exit 0
