#!/usr/bin/env python3
"""Regenerates the golden msgpack vectors of kiln-proto from Appendix A of
shared/spec/worker-protocol.md (a capture between a real Buildbot 4.3.0 master
and a real buildbot-worker 4.3.0).

Every message is written as the Python dict the real peer built, with the
captured key order and value types, and packed with the real Python
``msgpack.packb(d, use_bin_type=True)`` -- exactly what both Python peers do.

Where the capture is shortened ("...", "…(cut)", "...(N chars)", redactions)
the value is completed plausibly; each such place says so in a comment.  Most
captured messages carry their payload length (``len=N``); ``captured_len`` in
the manifest records it and this script asserts the reconstruction packs to
exactly that many bytes.  That constrains the completed values: their int
widths, array lengths and string lengths must add up to what was captured
(all 54 captured messages match; two synthesized vectors have no capture).

Usage:  python3 -m pip install msgpack   (or use a venv)
        python3 crates/kiln-proto/tests/golden/gen_golden.py
Writes NN_name.msgpack and manifest.json next to this file.  The output is
deterministic; re-running it must leave git clean (the tar stream inside
update_upload_directory_write comes from Python's tarfile, so another Python
version than 3.11 could change those bytes; msgpack's own output is stable).
"""

import io
import json
import os
import sys
import tarfile

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = "/srv/bb-demo"
WB = BASE + "/worker"
BUILD = WB + "/b1/build"

VECTORS = []


def vec(name, direction, typ, msg, captured_len=None, note=""):
    """Registers one vector.  typ is the Rust variant it must decode to."""
    VECTORS.append(dict(name=name, direction=direction, typ=typ, msg=msg,
                        captured_len=captured_len, note=note))


def lines(text, times, positions=None):
    """A line-triple [text, newline positions, line times].

    positions are computed from text; where the capture shows them they are
    passed in and checked (a capture with "..." passes the shown prefix)."""
    assert text.endswith("\n"), text
    pos = [i for i, c in enumerate(text) if c == "\n"]
    if positions is not None:
        assert pos[:len(positions)] == positions, (pos, positions)
    assert len(times) == len(pos), (len(times), len(pos), text)
    return [text, pos, list(times)]


def times_from(first, second, n, step=0.0000391):
    """n line times: the two captured ones, then plausible small increments
    (the capture elides the rest with "...")."""
    out = [first, second]
    while len(out) < n:
        out.append(round(out[-1] + step, 7))
    return out[:n]


# ---------------------------------------------------------------------------
# The worker process environment.  The capture redacts it everywhere
# ("environ: {...redacted...}", "<NAME=value lines redacted>"), so this is a
# reconstruction -- but a tightly constrained one.  One environment has to
# give, at the same time: the shell header with logEnviron (1822 chars, the
# update 2561 bytes), the cpdir header (1678 chars, 2687 bytes), the rmdir
# header (1601 chars, 2180 bytes) and the get_worker_info response (2075
# bytes).  That pins down the number of variables (35), their total size,
# which values are >= 32 chars (str8 vs fixstr), and len(LANG) = len(HOME) + 2
# (the shell drops LANG and adds HOMECOPY=${HOME}/sub).  The stat result's
# uid/gid must be < 128 for that update to be 103 bytes: the worker ran as
# root, hence HOME=/root and LANG=C.UTF-8 (the spec's prose example shows
# "/home/ci/sub"; any HOME with the matching LANG length packs the same).
# Names and values beyond that are plausible, not observed.
WORKER_ENV = {
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LOGNAME": "root",
    "PATH": "/root/.cargo/bin:/root/.local/bin:" + BASE + "/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PWD": WB,
    "SHELL": "/bin/bash",
    "SHLVL": "2",
    "TERM": "tmux-256color",
    "USER": "root",
    "VIRTUAL_ENV": BASE + "/venv",
    "VIRTUAL_ENV_PROMPT": "venv",
    "XDG_RUNTIME_DIR": "/run/user/0",
    "XDG_SESSION_CLASS": "user",
    "XDG_SESSION_ID": "13",
    "XDG_SESSION_TYPE": "tty",
    "XDG_DATA_DIRS": "/usr/local/share/:/usr/share/:/var/lib/snapd/desktop",
    "SSH_CLIENT": "192.168.122.1 51422 22",
    "SSH_CONNECTION": "192.168.122.1 51422 192.168.122.15 22",
    "SSH_TTY": "/dev/pts/0",
    "SSH_AUTH_SOCK": "/tmp/ssh-ZGqlJ8hk2M/agent.122113",
    "MAIL": "/var/mail/root",
    "MOTD_SHOWN": "pam",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/0/bus",
    "LESSCLOSE": "/usr/bin/lesspipe %s %s",
    "LESSOPEN": "| /usr/bin/lesspipe %s",
    "OLDPWD": "/root",
    "TMUX": "/tmp/tmux-0/default,2345,0",
    "TMUX_PANE": "%1",
    "COLORTERM": "truecolor",
    "EDITOR": "vim",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "HOSTNAME": "bb-demo-vm",
    "LS_COLORS": ("rs=0:di=01;34:ln=01;36:mh=00:pi=40;33:so=01;35:do=01;35:bd=40;33;01:cd=40;33;01:"
                  "or=40;31;01:mi=00:su=37;41:sg=30;43:ca=00:tw=30;42:ow=34;42:st=37;44:ex=01;32:"
                  + "".join("*.%s=01;31:" % x for x in (
                      "tar tgz arc arj taz lha lz4 lzh lzma tlz txz tzo t7z zip z").split())),
    "_": BASE + "/venv/bin/buildbot-worker",
}


def env_dump(env):
    """The ' environment:' header block: one '  NAME=value' line per variable, sorted."""
    return " environment:\n" + "".join("  %s=%s\n" % (k, v) for k, v in sorted(env.items()))


# ===========================================================================
# Master -> worker requests
# ===========================================================================

vec("print_attached", "M->W", "Print",
    {'op': 'print', 'message': 'attached', 'seq_number': 0}, 39)
vec("print_ping", "M->W", "Print",
    {'op': 'print', 'message': 'ping', 'seq_number': 6}, 35)
vec("get_worker_info", "M->W", "GetWorkerInfo",
    {'op': 'get_worker_info', 'seq_number': 1}, 32)
vec("set_worker_settings", "M->W", "SetWorkerSettings",
    {'op': 'set_worker_settings',
     'args': {'newline_re': '(\\r\\n|\\r(?=.)|\\033\\[u|\\033\\[[0-9]+;[0-9]+[Hf]|\\033\\[2J|\\x08+)',
              'max_line_length': 4096, 'buffer_timeout': 5, 'buffer_size': 65536},
     'seq_number': 2}, 168)
vec("start_listdir", "M->W", "StartCommand",
    {'op': 'start_command', 'command_id': '0', 'command_name': 'listdir',
     'args': {'path': WB}, 'seq_number': 3}, 95)
vec("start_mkdir_attach", "M->W", "StartCommand",
    {'op': 'start_command', 'command_id': '1', 'command_name': 'mkdir',
     'args': {'paths': [WB + '/b1']}, 'seq_number': 4}, 98)

SHELL_CMD = ("echo hello; echo oops >&2; printf 'abc' > up.txt; mkdir -p dir/sub; "
             "echo a > dir/a.txt; echo b > dir/sub/b.txt; printf 'no-newline'")


def shell_args(command, env=None, logfiles=None, timeout=1200, maxTime=None,
               sigtermTime=None, logEnviron=False):
    return {'workdir': BUILD, 'env': {} if env is None else env,
            'want_stdout': True, 'want_stderr': True,
            'logfiles': {} if logfiles is None else logfiles, 'timeout': timeout,
            'maxTime': maxTime, 'max_lines': None, 'sigtermTime': sigtermTime,
            'usePTY': False, 'logEnviron': logEnviron, 'initial_stdin': None,
            'interruptSignal': 'KILL', 'command': command}


SHELL_ENV = {'FOO': 'bar', 'MYPATH': ['/a', '/b'], 'PYTHONPATH': ['/x', '/y'],
             'HOMECOPY': '${HOME}/sub', 'LANG': None}

vec("start_shell_string_env", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '2', 'command_name': 'shell',
     'args': shell_args(SHELL_CMD, env=SHELL_ENV, logEnviron=True), 'seq_number': 7}, 470)
vec("start_shell_argv", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '3', 'command_name': 'shell',
     'args': shell_args(['python3', '-c', 'import sys; print("x" * 10); sys.exit(3)']),
     'seq_number': 8}, 324)
vec("start_shell_logfiles", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '4', 'command_name': 'shell',
     'args': shell_args('for i in 1 2 3; do echo line$i >> out.log; sleep 1; done; echo done',
                        logfiles={'mylog': 'out.log'}),
     'seq_number': 9}, 353)
vec("start_shell_maxtime", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '5', 'command_name': 'shell',
     'args': shell_args('echo start; sleep 10', maxTime=2, sigtermTime=1), 'seq_number': 10}, 291)
vec("start_shell_timeout", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '6', 'command_name': 'shell',
     'args': shell_args('sleep 10', timeout=2), 'seq_number': 11}, 277)
vec("start_download_file", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '7', 'command_name': 'download_file',
     'args': {'maxsize': None, 'blocksize': 16384, 'workdir': 'build', 'mode': None,
              'workerdest': 'dl.txt', 'path': BUILD + '/dl.txt'},
     'seq_number': 12}, 194)
vec("start_upload_file", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '9', 'command_name': 'upload_file',
     'args': {'workdir': 'build', 'maxsize': None, 'blocksize': 262144, 'keepstamp': False,
              'workersrc': 'up.txt', 'path': BUILD + '/up.txt'},
     'seq_number': 14}, 198)
vec("start_upload_directory", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '10', 'command_name': 'upload_directory',
     'args': {'workdir': 'build', 'maxsize': None, 'blocksize': 16384, 'compress': None,
              'workersrc': 'dir', 'path': BUILD + '/dir'},
     'seq_number': 15}, 195)
vec("start_glob", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '11', 'command_name': 'glob',
     'args': {'path': BUILD + '/*.txt', 'logEnviron': False}, 'seq_number': 16}, 137)
vec("start_stat_workdir", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '12', 'command_name': 'stat',
     'args': {'workdir': 'build', 'path': BUILD + '/dl.txt'}, 'seq_number': 17}, 140)
vec("start_upload_file_abs", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '13', 'command_name': 'upload_file',
     'args': {'workdir': 'build', 'maxsize': None, 'blocksize': 16384, 'keepstamp': False,
              'workersrc': BUILD + '/dl.txt', 'path': BUILD + '/dl.txt'},
     'seq_number': 18}, 227)
vec("start_mkdir", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '16', 'command_name': 'mkdir',
     'args': {'paths': [BUILD + '/newdir']}, 'seq_number': 21}, 129)
vec("start_cpdir", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '17', 'command_name': 'cpdir',
     'args': {'timeout': 120, 'from_path': BUILD + '/dir', 'to_path': BUILD + '/dir2'},
     'seq_number': 22}, 181)
vec("start_rmdir", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '18', 'command_name': 'rmdir',
     'args': {'paths': [BUILD + '/dir2']}, 'seq_number': 23}, 127)
vec("start_stat_missing", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '19', 'command_name': 'stat',
     'args': {'path': WB + '/b1/up.txt'}, 'seq_number': 24}, 119)
vec("start_shell_sleep_argv", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '19', 'command_name': 'shell',
     'args': shell_args(['sleep', '30'], sigtermTime=1), 'seq_number': 24}, 281)
vec("interrupt_command", "M->W", "InterruptCommand",
    {'op': 'interrupt_command', 'builder_name': 'b1', 'command_id': '19',
     'why': 'bbproto test interrupt', 'seq_number': 25}, 91)
vec("start_upload_file_keepstamp", "M->W", "StartCommand",
    {'op': 'start_command', 'builder_name': 'b1', 'command_id': '20', 'command_name': 'upload_file',
     'args': {'workdir': 'build', 'maxsize': None, 'blocksize': 262144, 'keepstamp': True,
              'workersrc': 'up.txt', 'path': BUILD + '/up.txt'},
     'seq_number': 26}, 199)
vec("shutdown", "M->W", "Shutdown", {'op': 'shutdown', 'seq_number': 27}, 25)
vec("keepalive", "M->W", "Keepalive", {'op': 'keepalive', 'seq_number': 5}, 26)

# ===========================================================================
# Master -> worker responses
# ===========================================================================

vec("response_none_m2w", "M->W", "Response",
    {'op': 'response', 'seq_number': 0, 'result': None}, 33)
vec("response_exception_utime", "M->W", "Response",
    {'op': 'response', 'seq_number': 52,
     'result': 'FileWriter.remote_utime() takes 2 positional arguments but 3 were given',
     'is_exception': True}, 119)
# Not in the capture: the 4.3.0 master always answers update_read_file with None
# (spec §6.8 bug).  This is the *intended* answer, a bin chunk, as a fixed
# master (and a Rust master) sends it.  Synthesized.
vec("response_read_file_bin", "M->W", "Response",
    {'op': 'response', 'seq_number': 14, 'result': b'hello download\n'},
    note="synthesized: intended update_read_file answer (bin), not captured")
# Not in the capture: the answer to an unknown op, as spec §3.3 words it.  Synthesized.
vec("response_unknown_op", "W->M", "Response",
    {'op': 'response', 'seq_number': 9, 'result': 'Command frobnicate does not exist.',
     'is_exception': True},
    note="synthesized: §3.3 unknown-op exception response, not captured")

# ===========================================================================
# Worker -> master
# ===========================================================================

vec("response_none_w2m", "W->M", "Response",
    {'op': 'response', 'seq_number': 3, 'result': None}, 33)

# get_worker_info result.  The capture redacts 'environ' and cuts the map after
# 'version'; completed per spec §9: worker_commands (14 names at "3.3" in
# registry order, §8.1) and delete_leftover_dirs as int 0.  environ is the
# reconstructed WORKER_ENV above (the worker's own os.environ); with it the
# message packs to the captured 2075 bytes of phases 1 and 2.
WORKER_INFO = {
    'admin': 'Your Name Here <admin@youraddress.invalid>\n',
    'access_uri': 'ssh://example.invalid/w1\n',
    'host': 'Please put a description of this build host here\n',
    'os_pretty_name': 'Debian GNU/Linux 12 (bookworm)',
    'os_name': 'Debian GNU/Linux',
    'os_version_id': '12',
    'os_version': '12 (bookworm)',
    'os_version_codename': 'bookworm',
    'os_id': 'debian',
    'os_home_url': 'https://www.debian.org/',
    'os_support_url': 'https://www.debian.org/support',
    'os_bug_report_url': 'https://bugs.debian.org/',
    'environ': dict(WORKER_ENV),  # redacted in the capture: reconstructed
    'system': 'posix',
    'basedir': WB,
    'numcpus': 2,
    'version': '4.3.0',
    # --- cut in the capture from here on; completed per spec §8.1/§9 ---
    'worker_commands': {name: '3.3' for name in [
        'shell', 'uploadFile', 'upload_file', 'uploadDirectory', 'upload_directory',
        'downloadFile', 'download_file', 'mkdir', 'rmdir', 'cpdir', 'stat', 'glob',
        'listdir', 'rmfile']},
    'delete_leftover_dirs': 0,
}
vec("response_worker_info", "W->M", "Response",
    {'op': 'response', 'seq_number': 1, 'result': WORKER_INFO}, 2075,
    note="environ redacted in the capture (reconstructed); map cut after 'version' (completed per §9)")

vec("update_listdir", "W->M", "Update",
    {'op': 'update', 'args': [['files', ['buildbot.tac', 'twistd.pid', 'twistd.hostname', 'twistd.log', 'info']],
                              ['rc', 0], ['elapsed', 7.724761962890625e-05]],
     'command_id': '0', 'seq_number': 0}, 129)
vec("complete_none", "W->M", "Complete",
    {'op': 'complete', 'args': None, 'command_id': '0', 'seq_number': 1}, 44)
vec("update_rc_elapsed", "W->M", "Update",
    {'op': 'update', 'args': [['rc', 0], ['elapsed', 0.0001678466796875]],
     'command_id': '1', 'seq_number': 2}, 65)

# Shell with a string command and logEnviron=True.  The header is cut by the
# proxy ("...(1822 chars)") and contains the redacted environment dump; the
# update is cut after 'elapsed' ("['st …(cut)"), which per spec §7.1/§8.3.1 is
# the flushed partial line ['stdout', ['no-newline\n', [10], [t]]].
# The child environment is §8.3.2 applied to WORKER_ENV: LANG dropped, FOO,
# HOMECOPY (${HOME} expanded), MYPATH, PYTHONPATH (dangling ':') added, PWD =
# workdir.
child_env = {k: v for k, v in WORKER_ENV.items() if k != 'LANG'}
child_env.update({'FOO': 'bar', 'MYPATH': '/a:/b', 'PYTHONPATH': '/x:/y:',
                  'HOMECOPY': WORKER_ENV['HOME'] + '/sub', 'PWD': BUILD})
hdr = (SHELL_CMD + "\n"
       + " in dir " + BUILD + " (timeout 1200 secs)\n"
       + " watching logfiles {}\n"
       + " argv: " + repr(SHELL_CMD.encode()) + "\n"
       + env_dump(child_env)
       + " using PTY: False\n")
assert len(hdr) == 1822, len(hdr)
# The proxy printed the first 300 characters of every long string.
assert hdr[:300].endswith('printf \'abc\' > up.txt; mkdir -p dir/sub; echo a > dir'), hdr[:300]
n = hdr.count("\n")
vec("update_shell_env", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460561.8780785, 1795460561.8783116, n, 0.0000012), [131, 188, 210])],
        ['stdout', lines('hello\n', [1795460561.8958242])],
        ['stderr', lines('oops\n', [1795460561.8959298])],
        ['rc', 0],
        ['header', lines('elapsedTime=0.019117\n', [1795460561.8982606])],
        ['elapsed', 0.020874977111816406],
        # cut in the capture: the final partial-line flush (§7.1)
        ['stdout', lines('no-newline\n', [1795460561.8984718])]],
     'command_id': '2', 'seq_number': 4}, 2561,
    note="header text (environment dump) and the tail after 'elapsed' reconstructed")

# Argv shell, exit 3.  Line times after the second are elided ("...").
hdr = ('python3 -c \'import sys; print("x" * 10); sys.exit(3)\'\n in dir ' + BUILD
       + ' (timeout 1200 secs)\n watching logfiles {}\n argv: [b\'python3\', b\'-c\', '
       + 'b\'import sys; print("x" * 10); sys.exit(3)\']\n using PTY: False\n')
vec("update_shell_rc3", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460562.487163, 1795460562.4872284, 5), [53, 110, 132, 204, 222])],
        ['stdout', lines('xxxxxxxxxx\n', [1795460562.6288044])],
        ['rc', 3],
        ['header', lines('elapsedTime=0.152449\n', [1795460562.6400375])],
        ['elapsed', 0.1531975269317627]],
     'command_id': '3', 'seq_number': 6}, 430)

# Shell with a watched logfile: 'log' items.  Cut after the last header's
# time; completed with the 'elapsed' item (value reconstructed).
hdr = ("for i in 1 2 3; do echo line$i >> out.log; sleep 1; done; echo done\n in dir " + BUILD
       + " (timeout 1200 secs)\n watching logfiles {'mylog': 'out.log'}\n"
       + " argv: b'for i in 1 2 3; do echo line$i >> out.log; sleep 1; done; echo done'\n"
       + " using PTY: False\n")
vec("update_shell_log", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460563.1224298, 1795460563.1225116, 5), [67, 124, 164, 242, 260])],
        ['log', ['mylog', lines('line1\nline2\n', [1795460565.1309404, 1795460565.1309404], [5, 11])]],
        ['stdout', lines('done\n', [1795460566.1448781])],
        ['log', ['mylog', lines('line3\n', [1795460566.1453197], [5])]],
        ['rc', 0],
        ['header', lines('elapsedTime=3.022516\n', [1795460566.1453636])],
        ['elapsed', 3.0227596759796143]],  # cut in the capture: reconstructed
     'command_id': '4', 'seq_number': 8}, 544,
    note="tail ('elapsed' value) reconstructed")

# maxTime kill: failure_reason 'timeout', rc -1.  Cut after the last header's
# time; completed with 'elapsed' (value reconstructed).
hdr = ("echo start; sleep 10\n in dir " + BUILD + " (timeout 1200 secs) (maxTime 2 secs)\n"
       " watching logfiles {}\n argv: b'echo start; sleep 10'\n using PTY: False\n")
vec("update_shell_maxtime", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460566.6159294, 1795460566.616, 5), [20, 94, 116, 147, 165])],
        ['stdout', lines('start\n', [1795460566.6282525])],
        ['failure_reason', 'timeout'],
        ['header', lines("\ncommand timed out: 2 seconds elapsed running b'echo start; sleep 10', "
                         "attempting to kill\nprocess killed by signal 15\n",
                         [1795460568.620193, 1795460568.620193, 1795460568.6209533], [0, 89, 117])],
        ['rc', -1],
        ['header', lines('elapsedTime=2.004786\n', [1795460568.6209764])],
        ['elapsed', 2.0050063133239746]],  # cut in the capture: reconstructed
     'command_id': '5', 'seq_number': 10}, 552,
    note="tail ('elapsed' value) reconstructed")

hdr = ("sleep 10\n in dir " + BUILD + " (timeout 2 secs)\n watching logfiles {}\n"
       " argv: b'sleep 10'\n using PTY: False\n")
vec("update_shell_timeout", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460568.9614766, 1795460568.9615371, 5), [8, 62, 84, 103, 121])],
        ['failure_reason', 'timeout_without_output'],
        ['header', lines("\ncommand timed out: 2 seconds without output running b'sleep 10', "
                         "attempting to kill\nprocess killed by signal 9\n",
                         [1795460570.9742646, 1795460570.9742646, 1795460570.9750519], [0, 84, 111])],
        ['rc', -1],
        ['header', lines('elapsedTime=2.013365\n', [1795460570.9750674])],
        ['elapsed', 2.0138401985168457]],
     'command_id': '6', 'seq_number': 12}, 487)

vec("update_read_file", "W->M", "ReadFile",
    {'op': 'update_read_file', 'length': 16384, 'command_id': '7', 'seq_number': 14}, 56)
vec("update_read_file_close", "W->M", "ReadFileClose",
    {'op': 'update_read_file_close', 'command_id': '7', 'seq_number': 15}, 52)
vec("update_upload_file_write", "W->M", "UploadFileWrite",
    {'op': 'update_upload_file_write', 'args': b'abc', 'command_id': '9', 'seq_number': 20}, 64)
vec("update_upload_file_close", "W->M", "UploadFileClose",
    {'op': 'update_upload_file_close', 'command_id': '9', 'seq_number': 21}, 54)
vec("update_upload_header", "W->M", "Update",
    {'op': 'update', 'args': [['header', lines('sending ' + BUILD + '/up.txt\n', [1795460571.9441283], [43])],
                              ['rc', 0], ['elapsed', 0.004705667495727539]],
     'command_id': '9', 'seq_number': 22}, 132)


def tarball():
    """The directory upload's tar stream: Python tarfile, PAX format, stream
    mode 'w', members relative to the uploaded dir, root as ''.  The capture
    shows only its first bytes (b'././@PaxHeader\\x00...') and its size
    (10240); this is a tar of the same tree (a.txt = "a\\n", sub/b.txt = "b\\n")
    with plausible fixed metadata.  Float mtimes make tarfile emit a PAX
    header per member, as in the capture."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        def add(name, kind, data=b"", mtime=1795460561.8868):
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            ti.uid = ti.gid = 1000
            ti.uname = ti.gname = "ci"
            ti.mtime = mtime
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("", tarfile.DIRTYPE, mtime=1795460561.8872113)
        add("a.txt", tarfile.REGTYPE, b"a\n", 1795460561.8878503)
        add("sub", tarfile.DIRTYPE, mtime=1795460561.8875232)
        add("sub/b.txt", tarfile.REGTYPE, b"b\n", 1795460561.8881945)
    data = buf.getvalue()
    assert data.startswith(b"././@PaxHeader\x00"), data[:20]
    assert len(data) == 10240, len(data)
    return data


vec("update_upload_directory_write", "W->M", "UploadDirectoryWrite",
    {'op': 'update_upload_directory_write', 'args': tarball(), 'command_id': '10', 'seq_number': 24}, 10308,
    note="tar content reconstructed (capture shows its first bytes and size only)")
vec("update_upload_directory_unpack", "W->M", "UploadDirectoryUnpack",
    {'op': 'update_upload_directory_unpack', 'command_id': '10', 'seq_number': 25}, 61)
vec("update_glob", "W->M", "Update",
    {'op': 'update', 'args': [['files', [BUILD + '/dl.txt', BUILD + '/up.txt']],
                              ['rc', 0], ['elapsed', 0.0004048347473144531]],
     'command_id': '11', 'seq_number': 28}, 148)
# stat tuple: the capture shows 3 of 10 entries ("..."); the rest is a plausible
# (nlink, uid, gid, size, atime, mtime, ctime) for the empty downloaded file.
vec("update_stat", "W->M", "Update",
    {'op': 'update', 'args': [['stat', [33152, 10078566, 65024, 1, 0, 0, 0,
                                         1795460570, 1795460570, 1795460570]],
                              ['rc', 0], ['elapsed', 4.863739013671875e-05]],
     'command_id': '12', 'seq_number': 30}, 103,
    note="stat entries after the third reconstructed")
vec("update_stat_enoent", "W->M", "Update",
    {'op': 'update', 'args': [['rc', 2], ['elapsed', 0.00011110305786132812],
                              ['header', lines('stat: No such file or directory: ' + WB + '/b1/up.txt\n',
                                               [1795460573.484778], [62])]],
     'command_id': '19', 'seq_number': 47}, 152)

# cpdir / rmdir: header with the worker's environment (logEnviron defaults to
# true for them), cwd = worker basedir (so PWD = basedir).  Header texts are cut
# by the proxy at "...(1678 chars)" / "...(1601 chars)"; the cpdir update is cut
# inside stdout and completed with the rest of cp -v's output, rc and elapsed.
fs_env = dict(WORKER_ENV, PWD=WB)
cp_argv = ['cp', '-R', '-P', '-p', '-v', BUILD + '/dir', BUILD + '/dir2']
hdr = (" ".join(cp_argv) + "\n in dir " + WB + " (timeout 120 secs)\n watching logfiles {}\n"
       + " argv: " + repr([a.encode() for a in cp_argv]) + "\n" + env_dump(fs_env) + " using PTY: False\n")
assert len(hdr) == 1678, len(hdr)
n = hdr.count("\n")
cp_out = ("'%s/dir' -> '%s/dir2'\n'%s/dir/sub' -> '%s/dir2/sub'\n'%s/dir/sub/b.txt' -> '%s/dir2/sub/b.txt'\n"
          "'%s/dir/a.txt' -> '%s/dir2/a.txt'\n") % ((BUILD,) * 8)
vec("update_cpdir", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460573.163091, 1795460573.163177, n, 0.0000007), [81, 128, 150])],
        # cut in the capture after the third line's start: completed
        ['stdout', lines(cp_out, [1795460573.1895134] * 4)],
        # cpdir runs with sendRC=False: RunProcess still sends its elapsedTime
        # header; CopyDirectory then sends rc, the command base class elapsed.
        ['header', lines('elapsedTime=0.044822\n', [1795460573.2081342])],
        ['rc', 0],
        ['elapsed', 0.04561305046081543]],
     'command_id': '17', 'seq_number': 43}, 2687,
    note="header environment dump, the rest of stdout, rc and elapsed reconstructed")

rm_argv = ['rm', '-rf', BUILD + '/dir2']
hdr = (" ".join(rm_argv) + "\n in dir " + WB + " (timeout 120 secs)\n watching logfiles {}\n"
       + " argv: " + repr([a.encode() for a in rm_argv]) + "\n" + env_dump(fs_env) + " using PTY: False\n"
       # rm -rf prints nothing, so RunProcess's closing elapsedTime header is
       # merged into the same header item (§7.3): the 1601 chars include it.
       + "elapsedTime=0.012587\n")
assert len(hdr) == 1601, len(hdr)
n = hdr.count("\n")
vec("update_rmdir", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines(hdr, times_from(1795460573.3508494, 1795460573.3509052, n, 0.0000007), [40, 87, 109])],
        ['rc', 0], ['elapsed', 0.013219356536865234]],
     'command_id': '18', 'seq_number': 45}, 2180,
    note="header environment dump reconstructed")

hdr = ("sleep 30\n in dir " + BUILD + " (timeout 1200 secs)\n watching logfiles {}\n"
       " argv: [b'sleep', b'30']\n using PTY: False\n")
vec("update_interrupt_flush", "W->M", "Update",
    {'op': 'update', 'args': [['header', lines(hdr, times_from(1795460661.087682, 1795460661.0877683, 5),
                                               [8, 65, 87, 112, 130])]],
     'command_id': '19', 'seq_number': 47}, 238)
vec("update_interrupt_killed", "W->M", "Update",
    {'op': 'update', 'args': [
        ['header', lines('\ncommand interrupted, attempting to kill\nprocess killed by signal 15\n',
                         [1795460663.0883098, 1795460663.0883098, 1795460663.0905583], [0, 40, 68])],
        ['rc', -1],
        ['header', lines('elapsedTime=2.002602\n', [1795460663.090583])]],
     'command_id': '19', 'seq_number': 48}, 203)
vec("update_upload_file_utime", "W->M", "UploadFileUtime",
    {'op': 'update_upload_file_utime', 'access_time': 1795460659.2217133,
     'modified_time': 1795460648.724916, 'command_id': '20', 'seq_number': 52}, 99)

# complete with a failure string.  The proxy cut it at "...(751 chars)"; the
# rest of the traceback is reconstructed (Twisted's brief traceback: one
# "file:line:function" line per frame) to exactly 751 characters.
SP = BASE + "/venv/lib/python3.11/site-packages/"
FAILURE = ("[Failure instance: Traceback: <class 'buildbot_worker.msgpack.RemoteWorkerError'>: "
           "FileWriter.remote_utime() takes 2 positional arguments but 3 were given\n"
           + SP + "twisted/internet/defer.py:1831:_inlineCallbacks\n"
           # ---- the capture's 300-character prefix ends inside the next line ----
           + SP + "twisted/internet/defer.py:1101:_runCallbacks\n"
           + SP + "twisted/internet/defer.py:839:errback\n"
           + SP + "buildbot_worker/commands/transfer.py:110:_close_ok\n"
           + "--- <exception caught here> ---\n"
           + SP + "twisted/internet/defer.py:2013:_inlineCallbacks\n"
           + SP + "buildbot_worker/commands/transfer.py:110:_close_ok\n"
           + "]")
assert len(FAILURE) == 751, len(FAILURE)
assert FAILURE[:300].endswith("\n" + SP + "twi"), FAILURE[:300]
vec("complete_failure", "W->M", "Complete",
    {'op': 'complete', 'args': FAILURE, 'command_id': '20', 'seq_number': 54}, 798,
    note="failure text after its first 240 characters reconstructed")


# ===========================================================================

def main():
    msgpack_version = ".".join(map(str, msgpack.version))
    for f in os.listdir(HERE):
        if f.endswith(".msgpack"):
            os.remove(os.path.join(HERE, f))
    manifest = []
    bad = []
    for i, v in enumerate(VECTORS, 1):
        data = msgpack.packb(v["msg"], use_bin_type=True)
        # Python's own decoder must give the dict back (sanity of the literal).
        assert msgpack.unpackb(data, raw=False) == v["msg"], v["name"]
        if v["captured_len"] is not None and len(data) != v["captured_len"]:
            bad.append("%s: packed %d bytes, captured %d" % (v["name"], len(data), v["captured_len"]))
        fname = "%02d_%s.msgpack" % (i, v["name"])
        with open(os.path.join(HERE, fname), "wb") as fh:
            fh.write(data)
        op = v["msg"]["op"]
        entry = {
            "file": fname,
            "direction": v["direction"],
            "op": op,
            "type": v["typ"],
            "seq_number": v["msg"]["seq_number"],
            "len": len(data),
            "captured_len": v["captured_len"],
        }
        if v["note"]:
            entry["note"] = v["note"]
        manifest.append(entry)
    if bad:
        sys.exit("reconstruction does not match the capture:\n  " + "\n  ".join(bad))
    with open(os.path.join(HERE, "manifest.json"), "w") as fh:
        json.dump({"generator": "gen_golden.py", "msgpack": msgpack_version,
                   "packb": "msgpack.packb(d, use_bin_type=True)", "vectors": manifest},
                  fh, indent=1)
        fh.write("\n")
    print("wrote %d vectors with msgpack %s" % (len(manifest), msgpack_version))


if __name__ == "__main__":
    main()
