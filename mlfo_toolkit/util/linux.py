"""Linux primitives mlfo's hosts are made of: network namespaces (setns), cgroup v1 CPU limits, and a folder's
changes (inotify) for what would otherwise be polled."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
# The cgroup v1 cpu controller: CFS quotas are how a host's CPU share is limited.
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# The cgroup v1 memory controller: a host's memory limit (device profiles).
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
CFS_PERIOD_US = 100_000


def setns(fd: int, nstype: int) -> None:
    """setns(2) of the calling thread into the namespace open as `fd`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def enter_network_namespace(pid: int) -> None:
    """setns(2) into the network namespace of `pid` (the calling thread; call before any threads)."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        setns(fd, CLONE_NEWNET)
    except OSError as err:
        raise OSError(err.errno, f"setns into the net namespace of {pid}: {err.strerror}") from None
    finally:
        os.close(fd)


@contextmanager
def network_namespace_of(pid: int) -> Iterator[None]:
    """Inside the network namespace of `pid` for the block, then back in this thread's own (no threads yet). Already
    in it, nothing changes (and no privilege is needed)."""
    if namespace_inode(pid) == namespace_inode("thread-self"):
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter_network_namespace(pid)
        try:
            yield
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): the kernel's socket tables over netlink, as `ss` reads them.
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_INET_DIAG_REQ = struct.Struct("=BBBxI48x")  # family, protocol, extensions, states, a zero socket id (48 bytes)


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports something listens on in the network namespace of `pid` (empty when that process is gone).

    Asked over sock_diag for listening sockets only: the kernel then walks its listening table, where reading
    /proc/PID/net/tcp walks every connection's hash bucket of the machine (10 ms a read here, and `topo up` waits
    for 57 services)."""
    try:
        with network_namespace_of(pid):  # a netlink socket belongs to the namespace it was made in
            diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except OSError:
        return set()
    ports: set[int] = set()
    with diag:
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            request = _INET_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
            diag.sendto(_NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY,
                                           NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + request, (0, 0))
            while not _read_listening(diag.recv(65536), ports):
                pass
    return ports


def _read_listening(data: bytes, ports: set[int]) -> bool:
    """Add the local ports of one sock_diag reply's messages to `ports`; whether the dump is done."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            errno = -struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)[0]
            raise OSError(errno, f"sock_diag: {os.strerror(errno)}")
        # inet_diag_msg: family, state, timer, retransmits (a byte each), then the socket id, local port first
        ports.add(struct.unpack_from("!H", data, offset + _NLMSG_HEADER.size + 4)[0])
        offset += (length + 3) & ~3
    return False


def namespace_inode(pid: int | str) -> int:
    """The inode of a process's network namespace: two processes share a namespace when theirs match."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def join_cgroup(directory: str) -> None:
    """Move the calling process into a cgroup (its CPU limit applies from now on)."""
    with open(os.path.join(directory, "cgroup.procs"), "w", encoding="ascii") as procs:
        procs.write(str(os.getpid()))


def cpu_cgroup(pid: int | str) -> str | None:
    """The cgroup v1 cpu directory of `pid`, or None without one."""
    return _cgroup_of(pid, "cpu", CGROUP_V1_CPU)


def memory_cgroup(pid: int | str) -> str | None:
    """The cgroup v1 memory directory of `pid`, or None without one."""
    return _cgroup_of(pid, "memory", CGROUP_V1_MEMORY)


def _cgroup_of(pid: int | str, controller: str, root: Path) -> str | None:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            directory = root / path.lstrip("/")
            return str(directory) if directory.is_dir() else None
    return None


def set_memory_limit(cgroup: str, megabytes: float | None) -> None:
    """A memory cgroup's limit (None: unlimited). The kernel refuses a limit below what the group uses now."""
    value = str(int(megabytes * 1024 * 1024)) if megabytes else "-1"
    (Path(cgroup) / "memory.limit_in_bytes").write_text(value)


def read_memory_limit(cgroup: str) -> float | None:
    """A memory cgroup's limit in MB (None: unlimited, which the kernel shows as a huge number)."""
    value = int((Path(cgroup) / "memory.limit_in_bytes").read_text())
    return None if value >= 2**62 else round(value / 1024 / 1024, 1)


def set_cpu_quota(cgroup: str, cpus: float | None) -> None:
    """CFS quota of `cpus` cores on a cgroup (None: unlimited)."""
    directory = Path(cgroup)
    (directory / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
    (directory / "cpu.cfs_quota_us").write_text(str(int(cpus * CFS_PERIOD_US)) if cpus else "-1")


def read_cpu_quota(cgroup: str) -> float | None:
    """A cgroup's CPU limit in cores (None: unlimited)."""
    quota = int((Path(cgroup) / "cpu.cfs_quota_us").read_text())
    period = int((Path(cgroup) / "cpu.cfs_period_us").read_text())
    return round(quota / period, 3) if quota > 0 else None


# inotify(7): a file in the folder was written, closed after writing, created or moved in.
_IN_CHANGES = 0x2 | 0x8 | 0x100 | 0x80  # IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class FolderChanges:
    """An inotify watch on one folder: `fd` turns readable when a file in it changes (`drain` then empties it).

    OSError when inotify is unavailable (its per-user limit reached, a file system without it): poll instead."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"inotify_init1: {os.strerror(errno)}")
        if libc.inotify_add_watch(fd, os.fsencode(folder), _IN_CHANGES) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch {folder}: {os.strerror(errno)}")
        self.fd = fd

    def drain(self) -> set[str]:
        """Read away the changes noted so far; the names of the files they were to."""
        names: set[str] = set()
        try:
            while chunk := os.read(self.fd, 65536):
                at = 0
                while at + 16 <= len(chunk):  # struct inotify_event: wd, mask, cookie, len, then the name
                    length = int.from_bytes(chunk[at + 12:at + 16], sys.byteorder)
                    names.add(chunk[at + 16:at + 16 + length].rstrip(b"\0").decode(errors="replace"))
                    at += 16 + length
        except BlockingIOError:
            pass
        return names

    def close(self) -> None:
        os.close(self.fd)
