"""A bounded ring buffer of readings, with numpy views for statistics."""

import threading

import numpy as np


class ReadingBuffer:
    def __init__(self, capacity):
        self.capacity = capacity
        self.times = np.zeros(capacity, dtype=np.float64)
        self.values = np.zeros(capacity, dtype=np.float64)
        self.sensor = np.zeros(capacity, dtype=np.int32)
        self.head = 0
        self.count = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def push(self, t, sensor_id, value):
        with self.lock:
            if self.count == self.capacity:
                self.dropped += 1
                self.count -= 1
            i = (self.head + self.count) % self.capacity
            self.times[i] = t
            self.sensor[i] = sensor_id
            self.values[i] = value
            self.count += 1

    def pop(self, n):
        with self.lock:
            n = min(n, self.count)
            idx = (self.head + np.arange(n)) % self.capacity
            out = list(zip(self.times[idx].tolist(), self.sensor[idx].tolist(), self.values[idx].tolist()))
            self.head = (self.head + n) % self.capacity
            self.count -= n
            return out

    def stats(self, sensor_id):
        with self.lock:
            idx = (self.head + np.arange(self.count)) % self.capacity
            sel = self.values[idx][self.sensor[idx] == sensor_id]
        if sel.size == 0:
            return None
        return {
            "n": int(sel.size),
            "mean": float(sel.mean()),
            "min": float(sel.min()),
            "max": float(sel.max()),
            "std": float(sel.std()),
        }
