"""Forwards buffered readings upstream in batches, with backoff while the link is down."""

import logging
import threading

import requests

log = logging.getLogger(__name__)


class Uplink(threading.Thread):
    def __init__(self, cfg, buffer):
        super().__init__(daemon=True, name="uplink")
        self.cfg = cfg
        self.buffer = buffer
        self.session = requests.Session()
        self.sent = 0
        self.failures = 0
        self.backoff = 1.0
        self.stopped = threading.Event()

    def send(self, batch):
        body = {"site": self.cfg.site, "readings": [{"t": t, "id": i, "v": v} for t, i, v in batch]}
        r = self.session.post(self.cfg.uplink_url, json=body, timeout=self.cfg.uplink_timeout)
        r.raise_for_status()

    def run(self):
        if not self.cfg.uplink_url:
            log.info("no uplink configured")
            return
        while not self.stopped.is_set():
            batch = self.buffer.pop(self.cfg.uplink_batch)
            if not batch:
                self.stopped.wait(1.0)
                continue
            try:
                self.send(batch)
                self.sent += len(batch)
                self.backoff = 1.0
            except requests.RequestException as e:
                self.failures += 1
                log.warning("uplink failed (%s), retrying in %.0f s", e, self.backoff)
                for t, i, v in batch:
                    self.buffer.push(t, i, v)
                self.stopped.wait(self.backoff)
                self.backoff = min(self.backoff * 2, 300.0)
