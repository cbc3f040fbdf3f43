"""Linux Landlock through ``ctypes``: a process confines itself (and every child it starts afterwards) to reading
and executing under some folders, writing under others and TCP on listed ports, without root.

Landlock is the kernel's unprivileged sandbox (Linux ≥ 5.13, when ``landlock`` is among the booted LSMs). Each
ABI version adds rights; :func:`confine` handles all those the running kernel knows: 1 the file-system rights,
2 ``REFER`` (links and renames across folders), 3 ``TRUNCATE``, 4 TCP bind and connect, 5 ``IOCTL_DEV`` (ioctl on
device files), 6 scoping (no abstract unix socket or signal reaches a process outside the confined tree). Three
system calls, numbered alike on every architecture Linux has added them to since 5.13 (x86_64 and aarch64
included): ``landlock_create_ruleset`` 444, ``landlock_add_rule`` 445, ``landlock_restrict_self`` 446.

Not covered by Landlock (ABI 7): UDP, connecting to a unix socket by its path, reading what a file descriptor
opened before :func:`confine` already holds.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from .errors import PhasestemError

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
PR_SET_NO_NEW_PRIVS = 38

# file-system rights (landlock.h LANDLOCK_ACCESS_FS_*)
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
# network rights (ABI 4) and scopes (ABI 6)
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

#: the rights that apply to a file that is not a folder (a rule on a file may hold only these)
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
#: what ``read`` folders allow; ``data`` folders the same less running programs
READ_RIGHTS = EXECUTE | READ_FILE | READ_DIR
DATA_RIGHTS = READ_FILE | READ_DIR


class LandlockUnavailable(PhasestemError):
    """This kernel has no Landlock (too old, not among the booted LSMs, or not Linux)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@functools.cache
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(number: int, *args) -> int:
    """``syscall(number, args…)``; an OSError with the errno where it fails."""
    result = _libc().syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def abi_version() -> int:
    """The Landlock ABI version of the running kernel (0 where it has no Landlock)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    except OSError:  # ENOSYS: too old; EOPNOTSUPP: built but not booted
        return 0


def handled_fs_rights(abi: int) -> int:
    """Every file-system right ABI ``abi`` knows."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def _ruleset_size(abi: int) -> int:
    """How much of :class:`_RulesetAttr` ABI ``abi`` reads: the fs rights; the net rights from 4; scopes from 6."""
    return 8 if abi < 4 else 16 if abi < 6 else 24


def _existing(paths: Iterable[Path | str]) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if path.exists() and path not in out:
            out.append(path)
    return out


def _add_path_rule(ruleset: int, path: Path, rights: int) -> None:
    if not path.is_dir():
        rights &= FILE_RIGHTS
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        attr = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH), ctypes.byref(attr),
                 ctypes.c_uint32(0))
    finally:
        os.close(fd)


def _add_port_rule(ruleset: int, port: int, rights: int) -> None:
    attr = _NetPortAttr(allowed_access=rights, port=port)
    _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_NET_PORT), ctypes.byref(attr), ctypes.c_uint32(0))


def _port_rights(tcp_connect: Iterable[int], tcp_bind: Iterable[int]) -> dict[int, int]:
    rights: dict[int, int] = {}
    for ports, right in ((tcp_connect, CONNECT_TCP), (tcp_bind, BIND_TCP)):
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise PhasestemError(f"confine: TCP port {port!r}: expected an integer from 0 to 65535")
            rights[port] = rights.get(port, 0) | right
    return rights


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def confine(read: Iterable[Path | str], write: Iterable[Path | str] = (), tcp_connect: Iterable[int] = (),
            tcp_bind: Iterable[int] = (), *, data: Iterable[Path | str] = ()) -> int:
    """Restrict this process and its future children, for good: read (and execute) only under ``read``, read but
    not execute under ``data``, read and write only under ``write`` (a file there may be made, changed, truncated,
    removed, linked; a device there opened and its ioctls used), TCP connect and bind only to the ports listed
    (none when none are listed; port 0 in ``tcp_bind``: any ephemeral port). Paths that do not exist are skipped;
    a file stands for itself, a folder for everything beneath it. Returns the ABI version used: below 4 TCP is not
    confined, below 6 signals and abstract unix sockets are not scoped.

    Landlock confines the calling thread and the processes it starts afterwards only: call this before any
    other thread starts (it refuses a process that already runs several). ``LandlockUnavailable`` where the
    kernel has no Landlock."""
    abi = abi_version()
    if abi == 0:
        raise LandlockUnavailable("confine: this kernel has no Landlock (Linux >= 5.13 with 'landlock' among its "
                                  "LSMs, see /sys/kernel/security/lsm)")
    threads = _thread_count()
    if threads > 1:
        raise PhasestemError(f"confine: this process already runs {threads} threads; Landlock would confine only "
                             "the calling one (confine before starting threads)")
    ports = _port_rights(tcp_connect, tcp_bind)
    fs_rights = handled_fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=fs_rights,
                        handled_access_net=BIND_TCP | CONNECT_TCP if abi >= 4 else 0,
                        scoped=SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    ruleset = _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(_ruleset_size(abi)),
                       ctypes.c_uint32(0))
    try:
        for path in _existing(read):
            _add_path_rule(ruleset, path, READ_RIGHTS)
        for path in _existing(data):
            _add_path_rule(ruleset, path, DATA_RIGHTS)
        for path in _existing(write):
            _add_path_rule(ruleset, path, fs_rights)
        if abi >= 4:
            for port, rights in ports.items():
                _add_port_rule(ruleset, port, rights)
        if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        _syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi


#: folders of the system a Python process with torch, numpy and h5py reads (libraries, certificates, locale, time
#: zones, CPU and GPU information, device nodes); those missing on a machine are skipped
SYSTEM_FOLDERS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev",
                  "/var/cache/fontconfig")
#: what such a process writes outside its own folders: the null device, POSIX shared memory and semaphores
#: (multiprocessing's queues and locks, torch's tensors shared between processes, NCCL), and the GPUs' device
#: nodes (NVIDIA's, and DRM render nodes)
SYSTEM_WRITE = ("/dev/null", "/dev/shm", "/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")


def _import_path() -> list[str]:
    """``sys.path`` less the folder Python put first for the script or ``-m`` (absent under ``-P``/``-I``) and
    less the working directory: the installation's folders (site-packages, editable installs, ``PYTHONPATH``)."""
    entries = sys.path[(0 if sys.flags.safe_path else 1):]
    cwd = os.getcwd()
    return [p for p in entries if p and os.path.isabs(p) and os.path.abspath(p) != cwd]


def python_read_paths() -> list[Path]:
    """The folders of this Python installation: its prefixes, standard library, site-packages, the other
    folders it imports from (:func:`_import_path`: editable installs) and the interpreter's folder."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))]
    paths += [v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")]
    return [Path(p) for p in paths + _import_path()]


def system_read_paths() -> list[Path]:
    """What a confined Python process running phasestem (torch, numpy, h5py, matplotlib) needs to read and
    execute: :func:`python_read_paths` and :data:`SYSTEM_FOLDERS` (those that exist), nested ones left out."""
    out: list[Path] = []
    for path in sorted(_existing(python_read_paths() + [Path(p) for p in SYSTEM_FOLDERS]),
                       key=lambda p: len(p.parts)):
        if not any(path == o or o in path.parents for o in out):
            out.append(path)
    return out


def system_write_paths() -> list[Path]:
    """The files and folders of :data:`SYSTEM_WRITE` on this machine (NVIDIA device nodes by their names)."""
    return _existing(Path(p) for pattern in SYSTEM_WRITE for p in sorted(glob.glob(pattern)))


def ephemeral_ports() -> range:
    """The ports the kernel hands out for a bind to port 0 or an unbound connect
    (``/proc/sys/net/ipv4/ip_local_port_range``; Linux's default 32768-60999 where it cannot be read)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)
