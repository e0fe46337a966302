"""Configuration: a YAML file with defaults for everything."""

import dataclasses
import os

import yaml


@dataclasses.dataclass
class Config:
    site: str = "unknown"
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    log_level: str = "INFO"
    poll_interval: float = 5.0
    agent_path: str = "/app/bin/sensor-agent"
    sensors: list = dataclasses.field(default_factory=list)
    uplink_url: str = ""
    uplink_batch: int = 200
    uplink_timeout: float = 30.0
    buffer_capacity: int = 100_000
    smoothing_window: int = 8


def load_config(path):
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings: {', '.join(unknown)}")
    cfg = Config(**data)
    if cfg.poll_interval <= 0:
        raise ValueError(f"{path}: poll_interval must be positive")
    if cfg.uplink_batch < 1:
        raise ValueError(f"{path}: uplink_batch must be at least 1")
    return cfg
