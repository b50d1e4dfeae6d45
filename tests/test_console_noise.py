"""The console filter alone, on real pipes: Ray core's known warning goes, every other byte passes, in order.

The whole path (a real local Ray, a pseudo-terminal, the CLI) is in test_ray_session and test_label_feed.
"""

from __future__ import annotations

import os
import threading
import time

from pipeline import console_noise
from pipeline.console_noise import is_known_noise

PRINTED = (b"[2026-12-04 01:57:12,424 E 2357 2357] core_worker.cc:2465: Actor with class name: "
           b"'MapWorker(MapBatches(Predictor))' and ID: 'e7890290d4d727866be2432001000000' has constructor "
           b"arguments in the object store and max_restarts > 0. If the arguments in the object store go out "
           b"of scope or are lost, the actor restart will fail. See "
           b"https://github.com/ray-project/ray/issues/53727 for more details.")


def test_only_the_known_warning_is_noise():
    assert is_known_noise(PRINTED)  # as Ray 2.60 printed it in the demo
    assert not is_known_noise(b"[2026-12-04 01:57:12,424 E 2357 2357] core_worker.cc:2465: Actor died")
    assert not is_known_noise(b"Traceback (most recent call last):")


def test_the_filter_passes_every_other_byte_in_order_and_a_bar_that_never_ends_its_line():
    source, sink = os.pipe()
    console_read, console = os.pipe()
    reader = threading.Thread(target=console_noise._forward, args=(source, console))
    reader.start()
    passed = bytearray()

    def collect() -> None:
        while chunk := os.read(console_read, 1 << 20):
            passed.extend(chunk)

    collector = threading.Thread(target=collect)
    collector.start()
    os.write(sink, b"one\n" + PRINTED + b"\ntwo\n")
    # A bar redrawn in place, never a newline, never a pause as long as PARTIAL_LINE_SECONDS: it must reach
    # the console while it runs, not only when its line ends. It runs until the console shows 40 kB of it.
    bar = bytearray()
    deadline = time.monotonic() + 5
    while len(passed) < 40_000 and time.monotonic() < deadline:
        frame = b"".join(b"\rprogress %05d" % (len(bar) // 15 + i) for i in range(60))
        os.write(sink, frame)
        bar.extend(frame)
        time.sleep(0.002)
    shown_while_running = len(passed)
    os.write(sink, b"\nlast words")  # unfinished when the writers are gone
    os.close(sink)
    reader.join(10)
    os.close(console)
    collector.join(10)
    os.close(console_read)
    assert not reader.is_alive()
    assert shown_while_running >= 40_000, "a line without a newline waited for its end"
    assert bytes(passed) == b"one\ntwo\n" + bytes(bar) + b"\nlast words"


# As TensorFlow 2.21 printed them on this 2-core machine without a GPU (`import tensorflow`, then one op).
TENSORFLOW_PRINTED = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796626774.312895   16162 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders.",
    b"I0000 00:00:1796626774.313206   16162 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    b"will not be used.",
    b"E0000 00:00:1796626778.333913   16162 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)",
]


def test_tensorflow_start_up_lines_go_as_tf_cpp_min_log_level_says():
    quiet = console_noise.tensorflow_noise({"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert all(is_known_noise(line, quiet) for line in TENSORFLOW_PRINTED)
    # A real TensorFlow error stays, and so does a Python warning from TensorFlow.
    assert not is_known_noise(b"E0000 00:00:1796626778.3 16162 op_kernel.cc:1857] OP_REQUIRES failed: OOM", quiet)
    assert not is_known_noise(b"WARNING:tensorflow:5 out of the last 5 calls triggered tf.function retracing", quiet)
    # The user asked TensorFlow for everything: only the CUDA start-up error of a machine without a GPU goes.
    loud = console_noise.tensorflow_noise({"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert [is_known_noise(line, loud) for line in TENSORFLOW_PRINTED] == [False, False, False, True]
    assert console_noise.tensorflow_noise({"TF_CPP_MIN_LOG_LEVEL": "junk"}) == loud
