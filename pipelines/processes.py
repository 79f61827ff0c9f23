"""Process plumbing: stage workers whose whole process tree dies with them or their orchestrator,
and torchrun launches whose output streams into the stage log.

A stage worker starts processes of its own that outlive a plain parent-death signal: datatrove's
and megatron's multiprocessing ``Manager``s and the ``resource_tracker`` (forked, in the worker's
process group) and torchrun's ranks (each in a session of its own). So every process a sweep
starts is *tagged*: the orchestrator puts a tag in the environment variable ``MIDPROBE_PROCESS_TAGS``
before it starts anything, each stage worker adds one of its own, and every descendant inherits
them (exec'd processes through their environment, forked ones through their parent's memory;
``/proc/<pid>/environ`` shows both). A small *reaper* process, outside the orchestrator's process
group, waits for the orchestrator to die (even by kill -9) and then kills every process carrying
its tag. A worker that dies alone is cleaned up by its orchestrator: its process group and every
process with the worker's tag.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

TAGS_ENV = "MIDPROBE_PROCESS_TAGS"
_PR_SET_PDEATHSIG = 1
# loaded once in the parent, so a forked child about to exec needs no dlopen
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None


def set_parent_death_signal(sig: int) -> None:
    """Run in a child process: have the kernel send it `sig` when its parent dies (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig)


def add_tag(tag: str) -> None:
    """Tag this process's future children (and grandchildren) with `tag`."""
    tags = os.environ.get(TAGS_ENV, "").split()
    os.environ[TAGS_ENV] = " ".join([*tags, tag])


def remove_tag(tag: str) -> None:
    tags = [t for t in os.environ.get(TAGS_ENV, "").split() if t != tag]
    if tags:
        os.environ[TAGS_ENV] = " ".join(tags)
    else:
        os.environ.pop(TAGS_ENV, None)


def _environ_tags(pid: int) -> list[str]:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's
        return []
    prefix = TAGS_ENV.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace").split()
    return []


def tagged_pids(tag: str) -> list[int]:
    """Live processes (zombies have no environment left) that carry `tag`."""
    me = os.getpid()
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    return [pid for pid in pids if pid != me and tag in _environ_tags(pid)]


def end_tree(tag: str, group: int | None = None, timeout: float = 5.0) -> int:
    """Kill the process group `group` and every process carrying `tag`, until none is left (a
    process may fork while it is being killed); the number of processes killed."""
    killed: set[int] = set()
    deadline = time.time() + timeout
    while True:
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        pids = tagged_pids(tag)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed.update(pids)
        if not pids or time.time() > deadline:
            return len(killed)
        time.sleep(0.1)


class Containment:
    """Everything started while it is open carries a fresh tag, and a reaper process kills all
    of it if this process dies without closing it (kill -9 included)."""

    def __init__(self):
        self.tag = f"mp-{uuid.uuid4().hex[:12]}"
        add_tag(self.tag)
        # its own session: a Ctrl-C or a kill of our process group must not take the reaper along
        # run as an isolated script (stdlib only): it must start wherever the orchestrator does
        self.reaper = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "reap", self.tag,
                                        str(os.getpid())], start_new_session=True,
                                       env={k: v for k, v in os.environ.items() if k != TAGS_ENV})

    def close(self) -> None:
        """Stop watching (what is left was ended by its owner or is the caller's business)."""
        remove_tag(self.tag)
        if self.reaper.poll() is None:
            self.reaper.kill()
        self.reaper.wait()


def _reap(tag: str, parent: int) -> None:
    """The reaper's main: wait until `parent` is gone, then end every process tagged `tag`."""
    set_parent_death_signal(signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    while os.getppid() == parent:  # polled too: the death signal follows the thread that forked us
        signal.sigtimedwait({signal.SIGTERM}, 0.5)
    killed = end_tree(tag, timeout=30.0)
    if killed:
        print(f"midprobe: orchestrator {parent} died; ended {killed} process(es) it had started",
              file=sys.stderr)


def init_worker(tag: str) -> None:
    """Pool initializer of a local stage worker: its own process group and tag, and death with its
    orchestrator (whose reaper then ends what the worker started)."""
    os.setpgid(0, 0)
    set_parent_death_signal(signal.SIGKILL)
    add_tag(worker_tag(tag, os.getpid()))


def worker_tag(tag: str, pid: int) -> str:
    return f"{tag}.{pid}"


# -- torchrun: a stage's training processes, streamed into the stage log -------------------

TAIL_LINES = 12  # of a failed launch's output, repeated in its error
TAIL_BYTES = 1 << 16
TRAIN_JOB = "train_job.json"

Metrics = Callable[[int, dict], None]


def torchrun(job, nproc: int, on_metrics: Metrics) -> None:
    """Train in `nproc` processes under torchrun (`midtrain.train`'s own launcher) on this node.

    A crashed attempt resumes like the in-process one: the job's out_dir is this run's
    partial directory, where the trainer keeps its checkpoints. The metrics reach
    `on_metrics` from the metrics.jsonl that the trainer's rank 0 writes.
    """
    # here, not at the top: the reaper runs this file with only the stdlib
    from pipelines.errors import StageFailed
    from runfiles import METRICS_FILE

    job_file = job.out_dir / TRAIN_JOB
    job_file.write_text(job.model_dump_json(indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "midtrain.train", str(job_file)]
    env = {**os.environ, "OMP_NUM_THREADS": str(job.config.threads)}
    forward = MetricsTail(job.out_dir / METRICS_FILE, on_metrics)
    code, tail = run_streaming(command, env, poll=forward)
    forward()  # what rank 0 wrote after the last poll
    if code:
        raise StageFailed(f"torchrun ({nproc} processes) exited with code {code}; last output:\n"
                          + "\n".join(failure_lines(tail.decode(errors="replace"))))


def failure_lines(output: str) -> list[str]:
    """The last lines of the ranks' tracebacks (torch prefixes them with `[rankN]:` once the
    process group is up), not torchrun's own report after them, which names no cause; all
    of the output's last lines when no rank got that far."""
    lines = output.splitlines()
    return ([line for line in lines if line.startswith("[rank")] or lines)[-TAIL_LINES:]


class MetricsTail:
    """Forwards metrics.jsonl records to a metrics callback as the trainer appends them.

    A resumed trainer rewrites the file without the lines past its checkpoint and logs those
    steps again; a step goes out again only when its line changed, and the store keeps a
    step's last values (and re-reads the file on publish anyway).
    """

    def __init__(self, path: Path, on_metrics: Metrics):
        self.path, self.on_metrics = path, on_metrics
        self.sent: dict[int, str] = {}
        self.seen_stat: tuple[int, int] | None = None

    def __call__(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if (stat.st_size, stat.st_mtime_ns) == self.seen_stat:
            return
        self.seen_stat = stat.st_size, stat.st_mtime_ns
        from runfiles import parse_metrics_line  # here: the reaper runs this file with only the stdlib

        for line in self.path.read_text(errors="replace").splitlines(keepends=True):
            if not line.endswith("\n"):  # still being written
                break
            record = parse_metrics_line(line)
            if record is None:  # torn by a killed attempt; the resumed trainer drops it
                continue
            if self.sent.get(record["step"]) != line:
                self.sent[record["step"]] = line
                self.on_metrics(record["step"], record["data"])


def run_streaming(command: list[str], env: dict, poll: Callable[[], None]) -> tuple[int, bytes]:
    """Run `command`, copying its output to this process's file descriptor 1 (under the
    executor, the stage log, as for C libraries) and calling `poll()` about every second;
    return its exit code and last output."""
    tail = b""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               # torchrun passes SIGTERM on to its ranks
                               preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
    try:
        while True:
            if select.select([process.stdout], [], [], 1.0)[0]:
                chunk = os.read(process.stdout.fileno(), TAIL_BYTES)
                if not chunk:  # every rank has closed the pipe
                    break
                os.write(1, chunk)
                tail = (tail + chunk)[-TAIL_BYTES:]
            poll()
    except BaseException:
        process.terminate()  # torchrun stops its ranks; their checkpoints stay for a resume
        raise
    finally:
        process.stdout.close()
        process.wait()
    return process.returncode, tail


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "reap":
        _reap(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python -I pipelines/processes.py reap TAG PARENT_PID")
