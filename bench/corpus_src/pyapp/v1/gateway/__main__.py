"""Entry point: `python3 -m gateway [--config PATH]`."""

import argparse
import logging

from . import __version__
from .api import create_app
from .config import load_config
from .sensors import SensorPoller
from .uplink import Uplink


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gateway", description=__doc__)
    ap.add_argument("--config", default="/etc/gateway/gateway.yaml")
    ap.add_argument("--version", action="version", version=__version__)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    poller = SensorPoller(cfg)
    uplink = Uplink(cfg, poller.buffer)
    poller.start()
    uplink.start()
    app = create_app(cfg, poller, uplink)
    app.run(host=cfg.listen_host, port=cfg.listen_port)


if __name__ == "__main__":
    main()
