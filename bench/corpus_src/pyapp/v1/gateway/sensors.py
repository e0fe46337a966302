"""Polls the sensors through the native agent and smooths their readings."""

import json
import logging
import subprocess
import threading
import time

import numpy as np

from .buffer import ReadingBuffer

log = logging.getLogger(__name__)


def moving_average(values, window):
    if len(values) < window:
        return float(np.mean(values)) if len(values) else 0.0
    kernel = np.ones(window) / window
    return float(np.convolve(values, kernel, mode="valid")[-1])


class SensorPoller(threading.Thread):
    def __init__(self, cfg):
        super().__init__(daemon=True, name="sensor-poller")
        self.cfg = cfg
        self.buffer = ReadingBuffer(cfg.buffer_capacity)
        self.history = {s["id"]: [] for s in cfg.sensors}
        self.errors = 0
        self.stopped = threading.Event()

    def read_once(self):
        ids = [str(s["id"]) for s in self.cfg.sensors]
        if not ids:
            return []
        out = subprocess.run([self.cfg.agent_path, "read", *ids], capture_output=True, timeout=10, check=True)
        return json.loads(out.stdout)["readings"]

    def run(self):
        while not self.stopped.is_set():
            try:
                now = time.time()
                for r in self.read_once():
                    hist = self.history.setdefault(r["id"], [])
                    hist.append(r["value"])
                    del hist[: -4 * self.cfg.smoothing_window]
                    self.buffer.push(now, r["id"], moving_average(hist, self.cfg.smoothing_window))
            except (subprocess.SubprocessError, ValueError, KeyError) as e:
                self.errors += 1
                log.warning("reading sensors failed: %s", e)
            self.stopped.wait(self.cfg.poll_interval)
