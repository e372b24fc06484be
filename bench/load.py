"""Serving load: concurrent gradio_client users against one fc app on loopback, queue overflow, a cancel mid-run.

Tiny random-weight models in the real layouts, so the numbers are about the serving path (queue, streaming, saving),
not the UNet. Every wait is bounded: a job that gives no answer within --timeout counts as lost.

Run: python -m bench.load [--users 8] [--steps 2] [--size 128] [--timeout 300]
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

OVERFLOW_QUEUE = 2  # queue size of the overflow app: most of a burst must be refused, and say so
SINGLE_RUNS = 3  # one user alone, this many times: the median is the baseline
CANCEL_STEPS = 60  # the job that is cancelled would run this many steps per pass


@dataclass
class Tally:
    """What happened to a set of jobs."""

    answered: int = 0  # came back with results
    refused: int = 0  # came back with a clear error (queue full)
    lost: int = 0  # no answer within the timeout, or an error without a message
    files: list[str] = field(default_factory=list)  # result files of the answered jobs
    errors: list[str] = field(default_factory=list)  # messages of the refused jobs
    lost_kinds: list[str] = field(default_factory=list)  # what the client raised for each lost job
    seconds: float = 0.0  # wall time from the first submit to the last answer

    def line(self) -> str:
        distinct = len(set(self.files))
        contents = len({hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in self.files})
        return (
            f"answered {self.answered}, refused {self.refused}, lost {self.lost}; {len(self.files)} files, "
            f"{distinct} distinct paths, {contents} distinct contents; wall {self.seconds:.1f} s"
        )


def write_models(root: Path):
    """Random-weight SD 1.5 + IC-Light offsets in the real layouts; the model settings that select them."""
    from diffusers import UNet2DConditionModel

    from core.models.manager import ModelSettings
    from core.models.synthetic import write_base_model, write_offsets

    base = write_base_model(root / "base")
    write_offsets(UNet2DConditionModel.from_pretrained(str(base), subfolder="unet"), root / "models")
    return ModelSettings(base_model=str(base), models_dir=root / "models", device="cpu", dtype="fp32", download=False)


def subject(path: Path, size: int) -> Path:
    """A textured disc on grey."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.35) ** 2
    rgb = np.full((size, size, 3), 127, np.uint8)
    rgb[disc] = (rng.rand(int(disc.sum()), 3) * 120 + 100).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def launch(model, outputs: Path, queue_size: int):
    """The fc app over `model`, served on a free loopback port; (demo, url)."""
    from core.lighting.suggest import SuggestConfig
    from gradio_fc import create_demo
    from ui.settings import AppSettings

    settings = AppSettings(model=model, outputs_dir=outputs, queue_size=queue_size, suggest=SuggestConfig())
    demo = create_demo(settings=settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return demo, url


def burst(url: str, image: Path, users: int, form: dict, timeout: float) -> Tally:
    """`users` clients, each on its own thread and connection, submit one relight at the same moment."""
    from gradio_client import Client, handle_file

    tally, lock = Tally(), threading.Lock()
    clients = [Client(url, verbose=False) for _ in range(users)]
    start = threading.Barrier(users)
    deadline = time.monotonic() + timeout

    def user(k: int) -> None:
        start.wait()
        job = clients[k].submit(foreground=handle_file(str(image)), seed=k, **form, api_name="/relight")
        try:
            result = job.result(timeout=max(1.0, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
            message = str(exc).strip()
            with lock:
                if message and "timeout" not in type(exc).__name__.lower():
                    tally.refused += 1
                    tally.errors.append(message.splitlines()[0][:100])
                else:
                    tally.lost += 1
                    tally.lost_kinds.append(f"{type(exc).__name__}: {message[:80]}")
            return
        with lock:
            tally.answered += 1
            tally.files += [str(path) for path in result[5] or []]

    started = time.perf_counter()
    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    tally.seconds = time.perf_counter() - started
    return tally


def cancel_midway(url: str, image: Path, form: dict, outputs: Path, timeout: float) -> str:
    """A long job cancelled after its first progress update; how fast the slot frees and what was saved."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    before = set(outputs.glob("*.png"))
    job = client.submit(foreground=handle_file(str(image)), **{**form, "steps": CANCEL_STEPS}, api_name="/relight")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not job.status().progress_data and not job.done():
        time.sleep(0.05)
    running = bool(job.status().progress_data)
    cancelled = time.perf_counter()
    job.cancel()
    follow = client.submit(foreground=handle_file(str(image)), **form, api_name="/relight")
    follow.result(timeout=max(1.0, deadline - time.monotonic()))
    freed = time.perf_counter() - cancelled
    saved = len(set(outputs.glob("*.png")) - before) - 1  # minus the follow-up job's own result
    state = "mid-run" if running else "before its first step"
    return f"cancelled {state}; the next job answered {freed:.1f} s later; files from the cancelled job: {saved}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps per pass (default 2)")
    parser.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each scenario, seconds (default 300)")
    args = parser.parse_args()
    if not 1 <= args.users <= 64:
        parser.error(f"--users should be in [1, 64] but is {args.users}")
    form = {"prompt": "a ball, warm light", "steps": args.steps, "width": 256, "height": 256,
            "highres_scale": 1.0, "matting": "none"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-load-") as temp:
        root = Path(temp)
        model = write_models(root)
        image = subject(root / "subject.png", args.size)

        demo, url = launch(model, root / "out", queue_size=max(20, args.users))
        burst(url, image, 1, form, args.timeout)  # warm-up: models load once, not inside the measurement
        alone = sorted(burst(url, image, 1, form, args.timeout).seconds for _ in range(SINGLE_RUNS))
        single = burst(url, image, 1, form, args.timeout)  # the tally line; its time is replaced by the median
        single.seconds = alone[SINGLE_RUNS // 2]
        crowd = burst(url, image, args.users, form, args.timeout)
        cancel = cancel_midway(url, image, form, root / "out", args.timeout)
        demo.close()

        demo, url = launch(model, root / "out2", queue_size=OVERFLOW_QUEUE)
        burst(url, image, 1, form, args.timeout)
        overflow = burst(url, image, args.users, form, args.timeout)
        demo.close()

    print(f"one user (median of {SINGLE_RUNS}): {single.line()}")
    print(f"{args.users} users at once: {crowd.line()}")
    print(f"  per job {crowd.seconds / max(1, crowd.answered):.2f} s vs {single.seconds:.2f} s alone "
          f"(ratio {crowd.seconds / max(1, crowd.answered) / max(single.seconds, 1e-9):.2f})")  # fmt: skip
    print(f"{args.users} users, queue of {OVERFLOW_QUEUE}: {overflow.line()}")
    for message in sorted(set(overflow.errors)):
        print(f"  refused with: {message}")
    for tally in (crowd, overflow):
        for kind in tally.lost_kinds:
            print(f"  lost: {kind}")
    print(f"cancel: {cancel}")


if __name__ == "__main__":
    main()
